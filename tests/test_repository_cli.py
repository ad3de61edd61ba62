"""The ``sc`` command line and repository semantics that need no network: ``file:`` sources."""

from __future__ import annotations

import hashlib
import fcntl
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import termios
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from shlex import quote as shlex_quote
from pathlib import Path

import pytest

import sharedcache

from scutil import (DEFAULT_SIGNALS, SC, SRC, Sleeper, check_tree, control, finish, make_tarball, pause_at, sample_files,
                    sc, sc_env, sc_start, stop_process, user_dir, wait_for)
from sharedcache.engine.leases import Owner, pid_namespace
from sharedcache.loaders.words import default_name
from sharedcache.repository.bases import KEPT_CACHES

FILES = sample_files()


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    first, second = tmp_path / "base1", tmp_path / "base2"
    first.mkdir()
    second.mkdir()
    return first, second


@pytest.fixture
def tarball(tmp_path: Path) -> tuple[Path, str]:
    path = tmp_path / "origin" / "data.tar.gz"
    path.parent.mkdir()
    return path, make_tarball(path, FILES)


def recipe(tarball: tuple[Path, str]) -> list[str]:
    path, md5 = tarball
    return [f"file:{path}", f"md5:{md5}", "tar"]


def d(dirs: tuple[Path, Path]) -> str:
    return f"{dirs[0]}:{dirs[1]}"


# What a warm use must not load: the index (SQLite), and the modules whose import alone costs a
# large part of its budget (measured by python -m benchmarks.peers, W3; see CONTRIBUTING.md).
WARM_FORBIDDEN = {"_sqlite3", "sqlite3", "contextlib", "collections", "importlib", "json", "re",
                  "typing", "pathlib", "threading", "argparse", "urllib3", "tarfile", "zipfile",
                  "dataclasses", "tomllib", "hashlib", "urllib.parse"}
# Exactly the modules of ours a warm use loads (CONTRIBUTING.md, "The warm path"): a module added
# here costs every warm use its loading time, so adding one is a decision, made in both places.
WARM_MODULES = {
    "sharedcache", "sharedcache.errors", "sharedcache.lean", "sharedcache.sizes", "sharedcache.progress",
    "sharedcache.config", "sharedcache.config.files",
    "sharedcache.cli", "sharedcache.cli.parser", "sharedcache.cli.commands",
    "sharedcache.repository", "sharedcache.repository.repositories", "sharedcache.repository.bases",
    "sharedcache.loaders", "sharedcache.loaders.words",
    "sharedcache.engine", "sharedcache.engine.fscache", "sharedcache.engine.layout",
    "sharedcache.engine.leases", "sharedcache.engine.locks", "sharedcache.engine.fsutil", "sharedcache.modes",
}


@pytest.mark.parametrize("how", ["named", "by its default name", "of a presigned URL"])
def test_warm_use_opens_no_index_and_imports_nothing_heavy(how, dirs, tarball, tmp_path, origin):
    # A site's settings of how to fetch are made into a policy on a miss only.
    config = tmp_path / "config"
    config.write_text("proxy = http://127.0.0.1:9|DIRECT\nrewrite = https://a.example/ = http://b.example/\n"
                      "connections = 4\nspeed_limit = 10KB\n")
    words = recipe(tarball)
    if how == "of a presigned URL":  # a query (hidden in the identity by its SHA-256), no --name
        url = origin.add("/data.tar.gz", tarball[0].read_bytes()) + "?X-Amz-Signature=0123abcd"
        words = [f"http:{url}", *words[1:]]
    named = ["-n", "repo"] if how == "named" else []
    name = "repo" if named else default_name(words)
    with Sleeper() as owner:
        args = [*named, "-d", d(dirs), "--pid", str(owner.pid), "--keep", *words]
        env = sc_env(SC_CONFIG=str(config), no_proxy="127.0.0.1")
        assert sc("--use", *args, env=env).returncode == 0
        with config.open("a") as appended:
            appended.write("netrc = /nonexistent\n")  # (a miss refuses it: the warm use must not look)
        script = textwrap.dedent(f"""
            import os, sys
            from sharedcache.cli import main
            sys.argv = ["sc", "--use", *{args!r}]
            status = main()
            loaded = {WARM_FORBIDDEN!r} & set(sys.modules)
            assert status == 0 and not loaded, (status, sorted(loaded))
            ours = {{name for name in sys.modules if name.split(".")[0] == "sharedcache"}}
            assert ours == {WARM_MODULES!r}, (sorted(ours - {WARM_MODULES!r}), sorted({WARM_MODULES!r} - ours))
            print(sorted(os.listdir({str(control(dirs[0]) / "objects" / name / "leases")!r})))
        """)
        warm = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                              timeout=60, env=env)
        assert warm.returncode == 0, warm.stderr
        assert warm.stdout.startswith(f"{user_dir(dirs[0]) / name}\n")
        assert warm.stdout.count(f":{owner.pid}:") == 2  # two leases of the owner, one per use
        check_tree(user_dir(dirs[0]) / name, FILES)


def test_a_warm_use_of_a_group_cache_looks_again_only_at_what_members_may_replace(dirs, tarball, tmp_path):
    # Only a group cache's stage and trash can be made another member's own (see
    # test_group_cache.py): a warm use that asked the status of the objects directory it
    # reached, which no member can replace, paid a system call for nothing.
    if shutil.which("strace") is None:
        pytest.skip("strace is not installed")
    with Sleeper() as owner:
        args = ["-n", "repo", "-d", str(dirs[0]), "--group", str(os.getgid()), "--pid", str(owner.pid),
                *recipe(tarball)]
        assert sc("--use", *args).returncode == 0
        trace = tmp_path / "trace"
        traced = subprocess.run(["strace", "-f", "-y", "-e", "trace=fstat,newfstatat,statx", "-o", str(trace),
                                 *SC, "--use", *args], capture_output=True, text=True, timeout=60, env=sc_env())
        assert traced.returncode == 0, traced.stderr
    looked_at = [line for line in trace.read_text().splitlines() if "/objects>" in line and '""' in line]
    assert not looked_at, looked_at


def test_use_prints_only_the_path_and_unuse_deletes(dirs, tarball):
    with Sleeper() as owner:
        args = ["-n", "repo", "-d", d(dirs), "--pid", str(owner.pid), *recipe(tarball)]
        result = sc("--use", *args)
        assert result.returncode == 0, result.stderr
        assert result.stdout == f"{user_dir(dirs[0]) / 'repo'}\n"
        assert result.stderr == ""
        check_tree(user_dir(dirs[0]) / "repo", FILES)
        located = sc("--location", *args)
        assert located.stdout == result.stdout and located.returncode == 0
        gone = sc("--unuse", *args)
        assert gone.returncode == 0, gone.stderr
        assert not (user_dir(dirs[0]) / "repo").exists()
        assert not (control(dirs[0]) / "objects" / "repo").exists()
        missing = sc("--location", *args)
        assert missing.returncode == 1 and missing.stdout == ""


def test_verbose_says_what_the_population_made_and_what_its_flush_and_commit_took(dirs, tarball):
    from sharedcache.sizes import format_size

    with Sleeper() as owner:
        args = ["-v", "-n", "repo", "-d", d(dirs), "--pid", str(owner.pid), *recipe(tarball)]
        made = sc("--use", *args)
        assert made.returncode == 0, made.stderr
        ready = [line for line in made.stderr.splitlines() if " is ready: " in line]
        assert len(ready) == 1, made.stderr
        said = re.fullmatch(r"sc: 'repo' is ready: (.+) on disk, made in (\d+\.\d\d) s, "
                            r"then committed in (\d+\.\d\d) s", ready[0])
        assert said is not None, ready[0]
        (listed,) = json.loads(sc("list", "--json", "-d", d(dirs)).stdout)
        assert said[1] == format_size(listed["size"])
        # A warm use makes nothing, and says nothing of it.
        again = sc("--use", *args)
        assert again.returncode == 0 and " is ready: " not in again.stderr, again.stderr


def test_the_command_ends_with_its_index_closed_and_its_output_written(dirs, tarball):
    # sc ends without the interpreter's teardown (cli.leave): what that teardown did must still
    # happen.  The connection to the index is closed, so SQLite folds its journal back into the
    # index file (a copy of that file alone is the whole index).
    with Sleeper() as owner:
        args = ["-n", "repo", "-d", d(dirs), "--pid", str(owner.pid), *recipe(tarball)]
        used = sc("--use", *args)
        assert used.returncode == 0 and used.stdout.strip(), used.stderr
        index = control(dirs[0]) / "index.sqlite"
        assert index.stat().st_size > 0
        assert not Path(f"{index}-wal").exists()
        assert sc("--unuse", *args).returncode == 0
        assert not Path(f"{index}-wal").exists()
        assert sc("gc", "-d", d(dirs)).returncode == 0
        assert not Path(f"{index}-wal").exists()
    # The exit handlers run (the index remakes its full-disk reserve in one).
    ran = dirs[1] / "handler-ran"
    code = ("import atexit, sys\nfrom sharedcache.cli import leave\n"
            "atexit.register(lambda: open(sys.argv[1], 'w').close())\nleave(3)")
    left = subprocess.run([sys.executable, "-c", code, str(ran)], capture_output=True, text=True,
                          timeout=60, env=sc_env())
    assert (left.returncode, left.stderr, ran.exists()) == (3, "", True)
    # A reader that went away before the output was written: a failure, said in one line (the
    # interpreter's teardown printed two lines about a BrokenPipeError, and exited 120).
    # So with the output written at once (PYTHONUNBUFFERED, which container images often set).
    # So too for the path --use writes at once: the failed flush left it in the buffer, which the
    # flush at exit failed to write once more, a second line.
    for unbuffered in ("", "1"):
        for command in (["--version"], ["--use", "-d", d(dirs), "--pid", str(os.getpid()), *recipe(tarball)]):
            read_end, write_end = os.pipe()
            os.close(read_end)
            try:
                gone = subprocess.run([*SC, *command], stdout=write_end, stderr=subprocess.PIPE,
                                      text=True, timeout=60, env=sc_env(PYTHONUNBUFFERED=unbuffered))
            finally:
                os.close(write_end)
            assert gone.returncode == 1
            assert gone.stderr == "sc: error: cannot write the output: Broken pipe\n", (unbuffered, command,
                                                                                         gone.stderr)
    # Started with its output or its error stream closed: nothing to write, nothing to fail,
    # whichever command writes the output (config wrote to sys.stdout, None: an internal error).
    # (The base that holds the cache alone: list says of one that holds none that it holds none.)
    for closed in (">&-", "2>&-"):
        for command in (["--version"], ["-h"], ["config"], ["list", "-d", str(dirs[0])], ["gc", "-d", d(dirs)]):
            done = subprocess.run(["sh", "-c", f'exec "$0" "$@" {closed}', *SC, *command],
                                  capture_output=True, text=True, timeout=60, env=sc_env())
            assert (done.returncode, done.stderr) == (0, ""), (closed, command, done.stderr)


@pytest.mark.parametrize("raised", [
    "OSError(errno.EIO, 'Input/output error', 'x\\n\\x1b[2Jy')",  # a file name is anyone's bytes
    "RuntimeError('x\\n\\x1b[2Jy')",  # the last resort's line quotes whatever the bug's text holds
])
def test_an_unforeseen_error_is_one_line_that_cannot_steer_the_terminal(raised):
    # Errors that no code foresaw, raised where a command runs: the lines said of them printed
    # their text as it was, a newline and a terminal's escape sequence included.
    script = textwrap.dedent(f"""
        import errno, sys
        from sharedcache.cli import commands, main
        def run(options):
            raise {raised}
        commands.run = run
        sys.exit(main(["config"]))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                            env=sc_env(PYTHONPATH=SRC))
    assert result.returncode == 1, result.stderr
    assert result.stderr.count("\n") == 1 and "\x1b" not in result.stderr, result.stderr
    assert "x\\n\\x1b[2Jy" in result.stderr, result.stderr


@pytest.mark.parametrize("encoding", ["utf-8", "ascii"])
def test_paths_are_written_as_their_bytes_whatever_the_output_s_encoding(tmp_path, tarball, encoding):
    # PYTHONIOENCODING=utf-8 (container images set it) cannot encode a name that is not UTF-8,
    # nor ascii one that is not ASCII: each command that printed such a path ended in an
    # internal error, the use taken released.
    for name in (b"b\xff", "\u00e9".encode()):
        base = os.fsencode(tmp_path) + b"/" + name
        os.mkdir(base)
        env = sc_env(PYTHONIOENCODING=encoding, SC_DIRECTORIES=os.fsdecode(base))
        args = ["--pid", str(os.getpid()), *recipe(tarball)]
        for command in (["--use", *args], ["--location", *args], ["gc"], ["config"]):
            done = subprocess.run([*SC, *command], capture_output=True, timeout=60, env=env)
            assert (done.returncode, done.stderr) == (0, b""), (name, command, done.stderr)
            if command[0] in ("--use", "--location"):
                assert done.stdout.startswith(base + b"/") and os.path.isdir(done.stdout.rstrip(b"\n"))
            elif command == ["gc"]:  # (its report escapes what is no text, as sc list does)
                assert base.replace(b"\xff", b"\\udcff") in done.stdout, done.stdout
            else:
                assert base in done.stdout, (command, done.stdout)


def test_a_base_path_that_is_no_utf_8_is_shown_alike_by_list_and_gc(tmp_path, tarball):
    # sc list escaped the bytes of such a path that are no text (\udce9), and gc's report wrote
    # them raw: one base read as two to whoever compared them.
    base = os.fsencode(tmp_path) + b"/caf\xe9"
    os.mkdir(base)
    shown = os.fsencode(tmp_path) + b"/caf\\udce9"
    env = sc_env(SC_DIRECTORIES=os.fsdecode(base))
    with Sleeper() as owner:
        used = subprocess.run([*SC, "--use", "--pid", str(owner.pid), *recipe(tarball)], capture_output=True,
                              timeout=60, env=env)
        assert used.returncode == 0, used.stderr
        listed = subprocess.run([*SC, "list"], capture_output=True, timeout=60, env=env)
        collected = subprocess.run([*SC, "gc"], capture_output=True, timeout=60, env=env)
    assert (listed.returncode, listed.stderr, collected.returncode, collected.stderr) == (0, b"", 0, b"")
    assert shown + b"/" in listed.stdout and collected.stdout.startswith(shown + b": "), \
        (listed.stdout, collected.stdout)
    assert b"\xe9" not in listed.stdout + collected.stdout


def test_a_checksummed_file_in_a_directory_whose_name_is_no_utf_8_is_used_located_and_released(dirs, tmp_path):
    # The checksummed identity leaves the file's directory out, so such a recipe is UTF-8 enough
    # to use; --location and --unuse of it, looking on a miss for the default name of caches
    # made before that identity (the words themselves), ended in an internal error.
    directory = os.fsencode(tmp_path) + b"/caf\xe9"
    os.mkdir(directory)
    with open(directory + b"/hello.txt", "wb") as file:
        file.write(b"hello\n")
    words = [b"file:" + directory + b"/hello.txt", b"md5:" + hashlib.md5(b"hello\n").hexdigest().encode()]
    with Sleeper() as owner:
        args = [b"-d", os.fsencode(dirs[0]), b"--pid", str(owner.pid).encode(), *words]
        for action, status in ((b"--location", 1), (b"--unuse", 1), (b"--use", 0), (b"--location", 0),
                               (b"--unuse", 0)):
            done = subprocess.run([*SC, action, *args], capture_output=True, timeout=60, env=sc_env())
            assert done.returncode == status and b"internal error" not in done.stderr, (action, done.stderr)


def test_a_config_file_s_path_that_is_no_utf_8_names_that_directory(tmp_path, tarball):
    # A config file is read as UTF-8, and a path in another encoding (Latin-1 "é") was read with
    # U+FFFD in its place: another directory than the file names ("(missing)", or one made there).
    base = os.fsencode(tmp_path) + b"/caf\xe9"
    os.mkdir(base)
    config = tmp_path / "config"
    config.write_bytes(b"directories = " + base + b"\n")
    done = subprocess.run([*SC, "--use", "--pid", str(os.getpid()), *recipe(tarball)], capture_output=True,
                          timeout=60, env=sc_env(SC_CONFIG=str(config)))
    assert (done.returncode, done.stderr) == (0, b""), done.stderr
    assert done.stdout.startswith(base + b"/"), done.stdout
    assert [name for name in os.listdir(tmp_path) if name.startswith("caf")] == ["caf\udce9"]


@pytest.mark.parametrize("encoding", ["", "utf-8"])
def test_text_the_file_system_s_encoding_lacks_is_written_escaped(tmp_path, encoding):
    # A config file is UTF-8, whatever the locale: under one of another encoding (here C, ASCII)
    # sc config printed a setting's character it lacks as an internal error, even where
    # PYTHONIOENCODING=utf-8 could write it.
    config = tmp_path / "config"
    config.write_text("directories = /d/b\u20ac\n", encoding="utf-8")
    env = sc_env(SC_CONFIG=str(config), LC_ALL="C", PYTHONUTF8="0", PYTHONCOERCECLOCALE="0",
                 PYTHONIOENCODING=encoding)
    done = subprocess.run([*SC, "config"], capture_output=True, timeout=60, env=env)
    assert (done.returncode, done.stderr) == (0, b""), done.stderr
    assert b"directories = /d/b\\u20ac  # " in done.stdout, done.stdout


def test_without_an_error_stream_stdout_still_carries_only_the_path(dirs, tarball):
    # A job that closed stderr (`P=$(sc --use ... 2>&-)`): the messages that had nowhere to go
    # were printed to stdout, as print() does given None, so the job read an error as its path,
    # and the first progress line failed a use that had worked.
    with Sleeper() as owner:
        options = ["-d", d(dirs), "--pid", str(owner.pid), "-v"]
        for action, status, words in (("--use", 0, recipe(tarball)), ("--location", 0, recipe(tarball)),
                                      ("--use", 1, ["file:/nonexistent/archive.tar", "tar"])):
            args = [*options, *words]
            done = subprocess.run(["sh", "-c", 'exec "$0" "$@" 2>&-', *SC, action, *args],
                                  capture_output=True, text=True, timeout=60, env=sc_env())
            assert done.returncode == status, (action, done.stdout)
            if status:
                assert done.stdout == ""
            else:
                assert Path(done.stdout.strip()).is_dir() and done.stdout.count("\n") == 1, done.stdout
    # The library in a process without stderr (a daemon): its messages go nowhere, not to stdout.
    code = ("import sys, sharedcache\n"
            "with sharedcache.use(*sys.argv[2:], directories=[sys.argv[1]], verbosity=1) as path:\n"
            "    print(path)\n")
    embedded = subprocess.run(["sh", "-c", 'exec "$0" "$@" 2>&-', sys.executable, "-c", code, str(dirs[1]),
                               *recipe(tarball)], capture_output=True, text=True, timeout=60, env=sc_env())
    assert embedded.returncode == 0 and embedded.stdout.count("\n") == 1, embedded.stdout
    assert Path(embedded.stdout.strip()).parent.parent == dirs[1]


_STDERR_OF_THE_PROGRAM = r"""
import fcntl, os, sys, threading
import sharedcache

read, write = os.pipe()
for fd in (read, write):
    fcntl.fcntl(fd, fcntl.F_SETFL, os.O_NONBLOCK)
try:
    while True:
        os.write(write, b"." * 65536)
except BlockingIOError:
    pass
# The program's own stderr, full for now (its reader busy): the use's first line cannot be written.
sys.stderr = own = open(write, "w", encoding="utf-8")


def drained():
    heard = b""
    try:
        while chunk := os.read(read, 65536):
            heard += chunk
    except BlockingIOError:
        pass
    return heard


with sharedcache.use(*sys.argv[2:], directories=[sys.argv[1]], verbosity=1):
    drained()
    line = threading.Thread(target=lambda: print("another thread's line", file=sys.stderr, flush=True))
    line.start()
    line.join(30)
    heard = drained()
print(sys.stderr is own, b"another thread's line" in heard)
"""


def test_a_use_that_cannot_write_its_messages_leaves_the_program_s_stderr_alone(dirs, tarball):
    # The library silenced itself by putting /dev/null in sys.stderr, for the whole program: the
    # lines its other threads wrote during (and after) the use were lost, and a stderr the
    # program had put there itself was swapped.
    done = subprocess.run([sys.executable, "-c", _STDERR_OF_THE_PROGRAM, str(dirs[0]), *recipe(tarball)],
                          capture_output=True, text=True, timeout=60, env=sc_env())
    assert (done.returncode, done.stdout) == (0, "True True\n"), done.stderr


def test_subcommand_forms_and_default_name(dirs, tarball):
    with Sleeper() as owner:
        args = ["-d", d(dirs), "--pid", str(owner.pid), *recipe(tarball)]
        first = sc("use", *args)
        again = sc("--use", *args)
        assert first.returncode == again.returncode == 0, first.stderr + again.stderr
        assert first.stdout == again.stdout
        path = Path(first.stdout.strip())
        assert path.parent == user_dir(dirs[0]) and path.name.startswith("data-")
        listing = json.loads(sc("list", "--json", "-d", d(dirs)).stdout)
        assert [(r["name"], r["users"]) for r in listing] == [(path.name, [owner.pid, owner.pid])]
        assert sc("unuse", *args).returncode == 0
        assert path.exists(), "one use is still held"
        assert sc("location", *args).returncode == 0
        assert sc("unuse", *args).returncode == 0
        assert not path.exists()
        # The subcommand is the first word no option takes, as a cron line may put it: it was
        # refused as "say what to do: ... list ...".
        for command in (["-d", str(dirs[0]), "list"], ["-q", "gc", "-d", d(dirs)], ["-d", d(dirs), "-n", "run", "run",
                                                                                  *recipe(tarball), "--", "true"]):
            result = sc(*command)
            assert (result.returncode, result.stderr) == (0, ""), (command, result)
        assert sc("-d", d(dirs), "list").stdout == sc("list", "-d", d(dirs)).stdout
        valued = sc("--use=", *args)  # (it said "unknown option --use")
        assert valued.stderr == "sc: error: option --use takes no value (see 'sc --help')\n", valued.stderr


def test_keep_leaves_an_lru_entry_within_max_size(dirs, tarball, tmp_path):
    with Sleeper() as owner:
        common = ["-d", str(dirs[0]), "--pid", str(owner.pid), "--keep", "--max-size", "2MB"]
        for n in range(3):
            args = [*common, "-n", f"kept{n}", *recipe(tarball)]
            assert sc("--use", *args).returncode == 0
            assert sc("--unuse", *args).returncode == 0
            assert (user_dir(dirs[0]) / f"kept{n}").exists(), "kept after the last release"
        # Each is ~0.5 MB of blocks; a fourth, in use, must evict the least recently used only.
        args = [*common, "-n", "big", f"file:{write_big(tmp_path, 1_000_000)}"]
        assert sc("--use", *args).returncode == 0
        names = {r["name"] for r in json.loads(sc("list", "--json", "-d", str(dirs[0])).stdout)}
        assert "big" in names and "kept0" not in names and "kept2" in names


def three_kept(dirs, tarball, owner) -> tuple[list[str], Callable[[], dict[str, int]]]:
    """Three repositories kept (kept0 to kept2, the last the most recently used) in the first base
    directory; the options that kept them, and what lists the names and sizes kept there."""
    common = ["-d", str(dirs[0]), "--pid", str(owner.pid), "--keep"]
    for n in range(3):
        args = [*common, "-n", f"kept{n}", *recipe(tarball)]
        assert sc("--use", *args).returncode == 0
        assert sc("--unuse", *args).returncode == 0

    def listed() -> dict[str, int]:
        return {r["name"]: r["size"] for r in json.loads(sc("list", "--json", "-d", str(dirs[0])).stdout)}
    return common, listed


def test_max_size_given_with_a_warm_use_applies_at_once(dirs, tarball):
    with Sleeper() as owner:
        common, listed = three_kept(dirs, tarball, owner)
        one = listed()["kept2"]
        # A warm use of kept2 with a budget of one repository: the two others go, kept2 stays.
        args = [*common, "-n", "kept2", "--max-size", str(one), *recipe(tarball)]
        assert sc("--use", *args).returncode == 0
        assert listed() == {"kept2": one}
        budget = control(dirs[0]) / "budget"
        assert budget.read_text() == str(one)
        written = budget.stat().st_mtime_ns
        assert sc("--use", *args).returncode == 0  # the same budget again: nothing written
        assert budget.stat().st_mtime_ns == written
        # A damaged budget (a member of a group cache may write one) fails no use: its line says
        # to set it again, and --max-size does, where it failed on reading the damaged one first.
        budget.write_text("junk")
        damaged = sc("--use", *[*common, "-n", "other", *recipe(tarball)])
        assert damaged.returncode == 0 and "set it again" in damaged.stderr, damaged.stderr
        assert sc("--use", *args).returncode == 0
        assert budget.read_text() == str(one)


def test_max_size_given_with_a_release_applies_to_it(dirs, tarball):
    with Sleeper() as owner, Sleeper() as stranger:
        common, listed = three_kept(dirs, tarball, owner)
        one = listed()["kept2"]
        args = ["-n", "last", *recipe(tarball)]
        assert sc("--use", *common, *args).returncode == 0
        budget = control(dirs[0]) / "budget"
        # A release that fails (that process holds no use) sets no budget either.
        failed = sc("--unuse", "-d", str(dirs[0]), "--pid", str(stranger.pid), "--max-size", str(one), *args)
        assert failed.returncode == 1 and not budget.exists(), failed.stderr
        # The job that keeps what it releases gives the budget: the release evicts down to it, the
        # repository it released staying, as the most recently used.
        released = sc("--unuse", *common, "--max-size", str(one), *args)
        assert released.returncode == 0, released.stderr
        assert listed() == {"last": one}
        assert budget.read_text() == str(one)


def test_a_budget_stays_on_its_base_until_none_lifts_it_and_sc_config_shows_it(dirs, tarball, tmp_path):
    # A budget set once evicted every kept repository for good once the setting was gone (a
    # site's config file that no longer gives one): sc config said "(not set)", and no value
    # lifted it ("none" was refused, and 0 is a budget of nothing).
    budget = control(dirs[0]) / "budget"
    with Sleeper() as owner:
        common = ["-d", str(dirs[0]), "--pid", str(owner.pid), "--keep"]

        def kept_after_release(name: str, at_use: list[str], at_release: list[str]) -> bool:
            args = [*common, "-n", name, *recipe(tarball)]
            assert sc("--use", *args, *at_use).returncode == 0
            released = sc("--unuse", *args, *at_release)
            assert released.returncode == 0, released.stderr
            return name in {row["name"] for row in json.loads(sc("list", "--json", "-d", str(dirs[0])).stdout)}

        assert not kept_after_release("kept0", ["--max-size", "1"], [])
        shown = sc("config", "-d", str(dirs[0]))
        assert f"max_size = (not set)  # default; stored: {dirs[0]} 1 B\n" in shown.stdout, shown.stdout
        assert not kept_after_release("kept1", [], []), "the budget stays until another is given"
        # Lifted by a use, then by a release: either keeps what it releases.
        assert kept_after_release("kept2", ["--max-size", "none"], [])
        assert not budget.exists()
        assert "max_size = (not set)  # default\n" in sc("config", "-d", str(dirs[0])).stdout
        assert not kept_after_release("kept3", ["--max-size", "1"], ["--max-size", "1"])
        assert kept_after_release("kept4", [], ["--max-size", "None"])
        assert not budget.exists()
    config = tmp_path / "config"
    config.write_text("max_size = none\n")
    shown = sc("config", "-d", str(dirs[0]), env=sc_env(SC_CONFIG=str(config)))
    assert f"max_size = none  # {config}:1\n" in shown.stdout, shown.stderr
    for bad in ("inf", "nan", "-1", "nothing"):
        refused = sc("--use", "-d", str(dirs[0]), "--max-size", bad, *recipe(tarball))
        assert (refused.returncode, refused.stderr) == (
            2, f"sc: error: invalid --max-size: {bad!r} (expected bytes or a number with a unit such as 10GB or "
               "512MiB, or none) (see 'sc --help')\n")
        config.write_text(f"max_size = {bad}\n")
        refused = sc("config", env=sc_env(SC_CONFIG=str(config)))
        assert refused.returncode == 2 and f"{config}:1: max_size must be a size: {bad!r}" in refused.stderr, \
            refused.stderr


def test_gc_reports_the_repositories_it_evicts_down_to_the_budget(dirs, tarball):
    # Its report said "nothing to do" (or only "trash removed") of kept repositories it evicted.
    with Sleeper() as owner:
        common, listed = three_kept(dirs, tarball, owner)
        one = listed()["kept2"]
        for n in range(3):  # in use, so that the budget given next evicts none of them yet
            assert sc("--use", *common, "-n", f"kept{n}", *recipe(tarball)).returncode == 0
        assert sc("--use", *common, "--max-size", str(one), "-n", "kept2", *recipe(tarball)).returncode == 0
        assert len(listed()) == 3
    collected = sc("gc", "-d", str(dirs[0]))  # (their user has ended)
    assert collected.returncode == 0 and "entries evicted: 2" in collected.stdout, collected
    assert set(listed()) == {"kept2"}


def test_a_release_that_deletes_what_it_releases_counts_it_against_no_budget(dirs, tarball):
    # The budget was set, and evicted down to, before the release, with the repository it then
    # deleted counted: kept repositories within the budget were evicted with it.
    with Sleeper() as owner, Sleeper() as other:
        _, listed = three_kept(dirs, tarball, owner)
        kept = listed()
        base = ["-d", str(dirs[0]), "-n", "passing", *recipe(tarball)]
        assert sc("--use", "--pid", str(owner.pid), *base).returncode == 0
        released = sc("--unuse", "--pid", str(owner.pid), "--max-size", str(sum(kept.values())), *base)
        assert released.returncode == 0, released.stderr
        assert listed() == kept, "kept repositories within the budget were evicted"
        # A release that leaves another use evicts down to the budget at once, sparing that one.
        for pid in (owner.pid, other.pid):
            assert sc("--use", "--pid", str(pid), *base).returncode == 0
        budget = kept["kept2"] + listed()["passing"]
        assert sc("--unuse", "--pid", str(owner.pid), "--max-size", str(budget), *base).returncode == 0
        assert set(listed()) == {"kept2", "passing"}


def test_a_kept_release_that_its_budget_evicts_leaves_no_link(dirs, tarball):
    # The release kept the repository, then evicted it down to its budget, and said "use
    # released", leaving the user's link dangling until a gc.
    with Sleeper() as owner:
        args = ["-d", str(dirs[0]), "--pid", str(owner.pid), "-n", "big", *recipe(tarball)]
        assert sc("--use", *args).returncode == 0
        released = sc("--unuse", "-v", "--keep", "--max-size", "1", *args)
        assert released.returncode == 0 and "repository deleted" in released.stderr, released.stderr
        link = user_dir(dirs[0]) / "big"
        assert not link.is_symlink() and not link.exists()
        assert json.loads(sc("list", "--json", "-d", str(dirs[0])).stdout) == []


@pytest.mark.parametrize("evicting", ["a warm use's budget", "a miss", "a release's budget", "the end of sc run"])
def test_the_repositories_an_eviction_deletes_leave_no_link(evicting, dirs, tarball, tmp_path):
    # Kept repositories that an eviction deleted on behalf of another (the budget a use or a
    # release gives, the room a population needs, the budget a release restores) left their
    # links dangling until a gc: only a release's own repository lost its link.
    with Sleeper() as owner, Sleeper() as holder:
        common, listed = three_kept(dirs, tarball, owner)
        one = listed()["kept2"]
        kept2 = ["-d", str(dirs[0]), "-n", "kept2", *recipe(tarball)]
        other = ["-d", str(dirs[0]), "-n", "other", *recipe(tarball)]
        if evicting == "a warm use's budget":
            result = sc("--use", *common, "--max-size", str(one), *kept2[2:])
            evicted, left = {"kept0", "kept1"}, {"kept2"}
        elif evicting == "a miss":
            # A budget that the three fill, given by a warm use: a fourth needs kept0's room.
            assert sc("--use", *common, "--max-size", str(3 * one), *kept2[2:]).returncode == 0
            result = sc("--use", "--pid", str(owner.pid), "--keep", *other)
            evicted, left = {"kept0"}, {"kept1", "kept2", "other"}
        elif evicting == "a release's budget":
            assert sc("--use", "--pid", str(owner.pid), *other).returncode == 0
            result = sc("--unuse", "--pid", str(owner.pid), "--keep", "--max-size", str(one), *other)
            evicted, left = {"kept0", "kept1", "kept2"}, {"other"}
        else:
            # sc run's repository is committed past the budget it gives, which kept2 fills,
            # in use; once kept2's user has ended, the run's release evicts it to restore it.
            assert sc("--use", "--pid", str(holder.pid), *kept2).returncode == 0
            ready, go = tmp_path / "ready", tmp_path / "go"
            wait = f"touch {ready}; i=0; while [ ! -e {go} ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done"
            run = sc_start("run", "--keep", "--max-size", str(one), *other, "--", "sh", "-c", wait)
            try:
                wait_for(ready.exists, what="sc run's command")
                assert set(listed()) == {"kept2", "other"}
                holder.kill()
                go.touch()
            finally:
                ((status, _, err),) = finish([run])
            result = subprocess.CompletedProcess(run.args, status, "", err)
            evicted, left = {"kept0", "kept1", "kept2"}, {"other"}
        assert result.returncode == 0, result.stderr
        assert set(listed()) == left
        dangling = {name for name in evicted if (user_dir(dirs[0]) / name).is_symlink()}
        assert not dangling, f"the links of {sorted(dangling)} dangle"
        assert all((user_dir(dirs[0]) / name).exists() for name in left)


def test_what_removes_a_deleted_repositorys_link_leaves_no_lock_file(dirs, tarball):
    # The link's removal takes the repository's population lock, making its file if need be: a
    # last release, an eviction's and gc's removal each left an empty populate/<name>.lock, which
    # only the next gc removed (saying "nothing to do").
    populate = control(dirs[0]) / "populate"
    with Sleeper() as owner, Sleeper() as ended:
        released = ["-d", str(dirs[0]), "--pid", str(owner.pid), "-n", "released", *recipe(tarball)]
        assert sc("--use", *released).returncode == 0
        assert sc("--unuse", *released).returncode == 0
        assert sorted(os.listdir(populate)) == []
        # Evicted by the budget of another's use, which keeps its own population's lock file.
        evicted = ["-d", str(dirs[0]), "--pid", str(owner.pid), "--keep", "-n", "evicted", *recipe(tarball)]
        assert sc("--use", *evicted).returncode == 0 and sc("--unuse", *evicted).returncode == 0
        size = json.loads(sc("list", "--json", "-d", str(dirs[0])).stdout)[0]["size"]
        other = ["-d", str(dirs[0]), "--pid", str(ended.pid), "-n", "other", *recipe(tarball)]
        assert sc("--use", "--max-size", str(size), *other).returncode == 0
        assert sorted(os.listdir(populate)) == ["other.lock"]
        assert not (user_dir(dirs[0]) / "evicted").is_symlink()
        # gc deletes the repository whose user has ended, and its link.
        ended.kill()
        assert sc("gc", "-d", str(dirs[0])).returncode == 0
        assert not (user_dir(dirs[0]) / "other").is_symlink()
        assert sorted(os.listdir(populate)) == []


def test_a_base_too_deep_for_the_index_is_refused_as_such(tarball, tmp_path):
    # The files of a cache opened by their paths (SQLite's, a staging directory's) failed past
    # PATH_MAX deep in a miss, as damage: "the index ... is unusable (...); run gc to rebuild it".
    deep = tmp_path
    while len(os.fsencode(deep)) < 3840:
        deep /= "d" * 200
    deep /= "d" * (4040 - len(os.fsencode(deep)) - 1)  # a directory sc can make, not its files
    deep.mkdir(parents=True)
    result = sc("--use", "-n", "r", "-d", str(deep), *recipe(tarball))
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert "is too deep for a cache: its path takes 4,040 bytes" in result.stderr, result.stderr
    assert "gc" not in result.stderr and not (deep / ".shared-cache-0").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root, to run sc as another user")
def test_a_base_of_a_user_outside_the_user_namespace_is_said_so(reachable_tmp):
    # In a rootless container, a base of the host's root shows the overflow uid: it was refused
    # as "belongs to uid 65534", which reads as the user nobody.
    from scutil import interpreter_for

    (reachable_tmp / "data").write_bytes(b"data")
    python, env = interpreter_for(65534, 65534)
    argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "unshare", "--user", "--map-root-user",
            python, "-m", "sharedcache", "--use", "-n", "r", "-d", str(reachable_tmp), f"file:{reachable_tmp}/data"]
    probe = subprocess.run([*argv[:7], "true"], capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        pytest.skip(f"no user namespace for another user here: {probe.stderr.strip()}")
    result = subprocess.run(argv, env={**env, "HOME": str(reachable_tmp)}, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert (f"{reachable_tmp} belongs to a user outside this user namespace (shown as uid 65534: the host's root, "
            "or another), who could replace what sc puts in it; refusing to use it") in result.stderr, result.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root, to run sc as another user")
def test_a_rootless_container_s_root_shares_its_user_s_cache(tmp_path, reachable_tmp):
    # The root of a rootless container is its user on the host: it named its directory
    # .shared-cache-0, beside the user's .shared-cache-65534, and downloaded the data again.
    from scutil import interpreter_for

    base = reachable_tmp / "base"
    base.mkdir()
    (reachable_tmp / "data").write_bytes(b"data")
    os.chown(base, 65534, 65534)
    python, env = interpreter_for(65534, 65534)
    user = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    rootless = [*user, "unshare", "--user", "--map-root-user"]
    probe = subprocess.run([*rootless, "true"], capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        pytest.skip(f"no user namespace for another user here: {probe.stderr.strip()}")
    command = [python, "-m", "sharedcache", "--use", "-n", "r", "-d", str(base), f"file:{reachable_tmp}/data"]
    with Sleeper() as owner:
        uses = [subprocess.run([*where, *command, "--pid", str(owner.pid)], env={**env, "HOME": str(tmp_path)},
                               capture_output=True, text=True, timeout=60) for where in (user, rootless, user)]
        assert [use.returncode for use in uses] == [0, 0, 0], [use.stderr for use in uses]
        assert {use.stdout for use in uses} == {f"{base}/.shared-cache-65534/r\n"}
        assert sorted(path.name for path in base.iterdir()) == [".shared-cache-65534"]
        listing = subprocess.run([*rootless, python, "-m", "sharedcache", "list", "--json", "-d", str(base)],
                                 env={**env, "HOME": str(tmp_path)}, capture_output=True, text=True, timeout=60)
        assert [len(row["users"]) for row in json.loads(listing.stdout)] == [3], listing


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root, to run sc as another user")
def test_a_rootless_container_s_root_resumes_its_user_s_download_and_an_unmapped_user_is_refused(
        tmp_path, reachable_tmp, origin):
    # The work directory was named by the uid inside the namespace: the container started its
    # user's interrupted download over from byte 0.  And in a user namespace without a map, the
    # user took the name of the host's nobody (.shared-cache-65534), every file's owner showing
    # as that overflow uid, so that no check by owner meant anything.
    from scutil import interpreter_for

    payload = os.urandom(3_000_000)
    url = origin.add("/big.bin", payload)
    origin.rate = 600_000
    recipe = ["-n", "big", f"http:{url}", "sha256:" + hashlib.sha256(payload).hexdigest()]
    base = reachable_tmp / "base"
    base.mkdir()
    os.chown(base, 65534, 65534)
    python, env = interpreter_for(65534, 65534)
    env = {**env, "HOME": str(tmp_path)}
    user = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    probe = subprocess.run([*user, "unshare", "--user", "--map-root-user", "true"], capture_output=True, timeout=30)
    if probe.returncode != 0:
        pytest.skip(f"no user namespace for another user here: {probe.stderr.strip()}")
    command = [python, "-m", "sharedcache", "--use", "-d", str(base), "--speed-limit", "0", *recipe]
    first = subprocess.Popen([*user, *command], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # (past a few of its checkpoints, which it writes once a second: what a next use resumes from)
        wait_for(lambda: origin.stats("/big.bin").bytes_served >= 1_800_000, what="the first download's start")
    finally:
        first.terminate()  # (its partial download is kept for the next use)
        first.communicate(timeout=30)
    with Sleeper() as owner:
        resumed = subprocess.run([*user, "unshare", "--user", "--map-root-user", *command, "--pid", str(owner.pid)],
                                 env=env, capture_output=True, text=True, timeout=60)
        assert resumed.returncode == 0, resumed.stderr
        assert origin.stats("/big.bin").ranges, "started over from byte 0"
        assert origin.stats("/big.bin").bytes_served < 2 * len(payload) - 1_000_000
        unmapped = subprocess.run([*user, "unshare", "--user", *command], env=env, capture_output=True, text=True,
                                  timeout=60)
        assert (unmapped.returncode, unmapped.stdout) == (1, ""), unmapped
        assert "has no uid outside its user namespace" in unmapped.stderr and unmapped.stderr.count("\n") == 1
        assert sorted(path.name for path in base.iterdir()) == [".shared-cache-65534"]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root, to run sc as other users")
def test_a_user_mapped_to_the_overflow_uid_is_refused(reachable_tmp):
    # Mapped to 65534 (rootless podman's USER nobody), a user saw the files of every user outside
    # its namespace as its own: another user's sticky base was used, whose owner could then swap
    # the user's directory in it for one of his own, and the printed path served his data.
    from scutil import interpreter_for

    victim, other = 65533, 65532
    base = reachable_tmp / "base"
    base.mkdir()
    os.chown(base, other, other)
    base.chmod(0o1777)
    (reachable_tmp / "data").write_bytes(b"data")
    python, env = interpreter_for(victim, victim)
    nobody = ["setpriv", f"--reuid={victim}", f"--regid={victim}", "--clear-groups",
              "unshare", "--user", "--map-user=65534", "--map-group=65534"]
    probe = subprocess.run([*nobody, "true"], capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        pytest.skip(f"no user namespace for another user here: {probe.stderr.strip()}")
    result = subprocess.run([*nobody, python, "-m", "sharedcache", "--use", "-n", "r", "-d", str(base),
                             f"file:{reachable_tmp}/data"], env={**env, "HOME": str(reachable_tmp)},
                            capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout) == (1, ""), result
    assert result.stderr == ("sc: error: this process's user (uid 65534 here) has the uid that the files of every "
                             "user outside its user namespace show (the kernel's overflow uid), so their files cannot "
                             "be told from its own: run sc where its user is mapped to another uid\n"), result.stderr
    assert list(base.iterdir()) == []


def test_a_name_held_in_another_cache_of_the_base_is_refused_before_any_download(dirs, tarball):
    # The user's own cache and a group's share the user's directory of links: a name taken in
    # one was refused in the other after its download, as "a symlink to '.cache/objects/...',
    # not to repository ...; refusing to follow it", which read as an attack.
    gid = os.getgid()
    group, group_cache = ["--group", str(gid)], dirs[0] / f".shared-cache-g{gid}"
    link = user_dir(dirs[0]) / "r"
    with Sleeper() as owner:
        args = ["-d", str(dirs[0]), "--pid", str(owner.pid), "-n", "r", *recipe(tarball)]
        assert sc("--use", *args).returncode == 0
        refused = sc("--use", *group, *args)
        assert (refused.returncode, refused.stdout) == (2, ""), refused
        assert refused.stderr == (f"sc: error: {link} is the path of repository 'r' of your own cache already: "
                                  "give this one another name, or release that one's uses first\n")
        assert not (group_cache / "objects" / "r").exists(), "nothing downloaded for it"
        assert sc("--unuse", *args).returncode == 0
        assert sc("--use", "--keep", *group, *args).returncode == 0
        refused = sc("--use", *args)
        assert refused.returncode == 2 and f"of the cache of group {gid} already" in refused.stderr, refused.stderr
        # Released, then deleted by a program of the engine alone, as another member's eviction
        # deletes it: the link stays until a gc.
        assert sc("--unuse", "--keep", *group, *args).returncode == 0
        group_engine = sharedcache.FsCache(group_cache, group=gid)
        try:
            group_engine.remove("r")
        finally:
            group_engine.close()
        assert link.is_symlink() and not link.exists()
        gone = sc("--use", *args)
        gc = f"sc gc -d {dirs[0]} --group {gid}"
        assert gone.returncode == 2 and f"which is gone: run '{gc}' to remove it" in gone.stderr, gone.stderr
        assert sc(*gc.split()[1:]).returncode == 0
        assert sc("--use", *args).returncode == 0


def test_run_refuses_a_pid_its_use_being_its_own(dirs, tarball, tmp_path):
    # sc run holds its use while its command runs: a --pid was ignored, the use not the PID's.
    ran = tmp_path / "ran"
    result = sc("run", "-d", str(dirs[0]), "--pid", "1", *recipe(tarball), "--", "touch", str(ran))
    assert (result.returncode, result.stdout) == (2, ""), result
    assert result.stderr == "sc: error: option --pid does not apply to run (see 'sc --help')\n"
    assert not ran.exists() and not any(dirs[0].iterdir())


def test_one_list_of_options_serves_use_location_and_unuse(dirs, tarball):
    # What a job gives --use it may give --location and --unuse too; there the options that mean
    # nothing (the size, the download's) are taken and ignored, never an error.
    with Sleeper() as owner:
        options = ["-d", str(dirs[0]), "-n", "repo", "--pid", str(owner.pid), "--size", "1GB", "--keep",
                   "--max-size", "1GB", "--timeout", "30", "--connections", "2", "--speed-limit", "1KB",
                   "--speed-time", "5", "--proxy", "DIRECT", "--offline"]
        used = sc("--use", *options[:-1], *recipe(tarball))  # (not offline: it populates)
        assert used.returncode == 0, used.stderr
        for action in ("--location", "--unuse"):
            result = sc(action, *options, *recipe(tarball))
            assert result.returncode == 0, (action, result.stderr)
        assert (user_dir(dirs[0]) / "repo").exists(), "kept"
        # A value that is none is refused alike by all three: --unuse released the use with a
        # --size that --use refuses, and --location ignored a --max-size that --unuse refuses.
        assert sc("--use", *options[:-1], *recipe(tarball)).returncode == 0
        for bad in (["--size", "1XB"], ["--max-size", "-1"], ["--speed-limit", "fast"]):
            for action in ("--use", "--location", "--unuse"):
                result = sc(action, *options, *bad, *recipe(tarball))
                assert (result.returncode, result.stdout) == (2, ""), (action, bad, result)
                assert result.stderr.startswith(f"sc: error: invalid {bad[0]}: {bad[1]!r} (expected bytes or a "
                                                "number with a unit"), (action, bad, result.stderr)
        listed = json.loads(sc("list", "--json", "-d", str(dirs[0])).stdout)
        assert [row["users"] for row in listed] == [[owner.pid]], "the use is still held"


def test_settings_that_a_command_does_not_use_never_fail_it(dirs, tarball, tmp_path):
    # From a config file and the environment, every setting is taken by every command: a site's
    # settings apply where they mean something, and are no error elsewhere.
    config = tmp_path / "config"
    config.write_text("keep = yes\nmax_size = 1GB\ntimeout = 30\nconnections = 2\nspeed_limit = 1KB\n"
                      "speed_time = 5\nproxy = DIRECT\n")
    env = sc_env(SC_CONFIG=str(config), SC_OFFLINE="1", SC_PROXY="DIRECT", SC_DIRECTORIES=str(dirs[0]))
    with Sleeper() as owner:
        args = ["-n", "repo", *recipe(tarball)]
        for command in (["--use", "--pid", str(owner.pid), *args], ["--location", *args],
                        ["--unuse", "--pid", str(owner.pid), *args], ["run", *args, "--", "true"],
                        ["list"], ["gc"], ["config"]):
            result = sc(*command, env=env)
            assert result.returncode == 0, (command, result.stderr)


def test_config_takes_every_option_that_is_a_setting(tmp_path):
    from sharedcache.cli.parser import OPTIONS
    from sharedcache.config.files import SETTINGS

    values = {"directories": str(tmp_path), "max_size": "1GB", "group": str(os.getgid()), "timeout": "5",
              "connections": "2", "speed_limit": "1KB", "speed_time": "5", "proxy": "DIRECT"}
    settings = [option for option in OPTIONS if option.dest in {setting.key for setting in SETTINGS}]
    given = [word for option in settings
             for word in ([option.flags[-1], values[option.dest]] if option.metavar else [option.flags[-1]])]
    shown = sc("config", *given)
    assert shown.returncode == 0, shown.stderr
    lines = dict(line.split(" = ", 1) for line in shown.stdout.splitlines())
    for option in settings:
        assert lines[option.dest].endswith(f"# {option.flags[-1]}"), (option.dest, lines[option.dest])


def write_big(tmp_path: Path, size: int) -> Path:
    path = tmp_path / "origin" / "big.bin"
    path.write_bytes(os.urandom(size))
    return path


def test_existing_repository_in_a_later_directory_is_used(dirs, tarball):
    with Sleeper() as owner:
        args = ["-n", "repo", "--pid", str(owner.pid), *recipe(tarball)]
        assert sc("--use", "-d", str(dirs[1]), *args).returncode == 0
        found = sc("--use", "-d", d(dirs), *args)
        assert found.stdout.strip() == str(user_dir(dirs[1]) / "repo")


def test_no_directory_with_enough_space_is_a_clear_error(dirs, tarball):
    result = sc("--use", "-n", "huge", "-s", "1PB", "-d", d(dirs), *recipe(tarball))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "huge" in lines[0]
    assert str(dirs[0]) in lines[0] and str(dirs[1]) in lines[0] and "free" in lines[0]


def test_same_name_with_another_recipe_is_refused(dirs, tarball, tmp_path):
    with Sleeper() as owner:
        assert sc("--use", "-n", "repo", "-d", d(dirs), "--pid", str(owner.pid), *recipe(tarball)).returncode == 0
        other = write_big(tmp_path, 1000)
        result = sc("--use", "-n", "repo", "-d", d(dirs), "--pid", str(owner.pid), f"file:{other}")
        assert result.returncode == 2
        assert "repo" in result.stderr and "holds another recipe" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "args",
    [
        ["--use"],
        ["--use", "tar"],
        ["--use", "nosuchloader:x"],
        ["--use", "http:notaurl"],
        ["--use", "file:/x", "md5:nothex"],
        ["--use", "--size", "lots", "file:/x"],
        ["--use", "--bogus", "file:/x"],
        ["--use", "--unuse", "file:/x"],
        ["--use=", "file:/x"],
        ["--use", "list"],
        ["--use", "-n", "../escape", "file:/x"],
        ["run", "file:/x"],
        [],
    ],
)
def test_usage_errors_exit_2_with_one_line(args, dirs):
    result = sc(*args, "-d", str(dirs[0])) if args else sc()
    assert result.returncode == 2, result
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith("sc: error: ")


@pytest.mark.parametrize(("flag", "wanted"), [("-n", "-n NAME, or --name=--"), ("--name", "--name NAME, or --name=--"),
                                             ("-d", "-d DIR[:DIR...], or --directories=--"),
                                             ("--proxy", "--proxy PROXIES, or --proxy=--")])
def test_an_option_that_took_the_separator_of_run_as_its_value_is_named(flag, wanted):
    # '--' is the value of an option that takes it (-n -- names the repository '--'): an option
    # whose value was forgotten took run's '--', and the line said that '-- COMMAND' was missing.
    result = sc("run", "file:/x", flag, "--", "./job.sh")
    assert (result.returncode, result.stdout, result.stderr) == (
        2, "", f"sc: error: option {flag} took '--' as its value: give {wanted} if '--' is the value meant "
               "(see 'sc --help')\n"), result.stderr
    # Given after '=', it was meant: the command is what is missing.
    missing = sc("run", "file:/x", "--name=--", "./job.sh")
    assert missing.returncode == 2 and "run needs '-- COMMAND [ARG...]'" in missing.stderr, missing.stderr


BAD_RECIPES = {
    "an unpacker first": (["tar", "file:/etc/hostname"], "a recipe starts with a source"),
    "an unknown word": (["file:/etc/hostname", "bogus"], "unknown loader 'bogus'"),
    "a digest that is none": (["file:/etc/hostname", "sha256:zz"], "64 hexadecimal digits"),
}


@pytest.mark.parametrize("base", ["missing", "too small"])
@pytest.mark.parametrize("recipe", BAD_RECIPES.values(), ids=BAD_RECIPES.keys())
def test_a_bad_recipe_is_refused_as_such_whatever_the_directories(tmp_path, base, recipe):
    # A miss chose its directory before it read its recipe: where none would do, the recipe's
    # fault was said as a want of a directory (exit 1), and learnt only once that was mended.
    words, said = recipe
    where = ["-d", str(tmp_path / "missing")] if base == "missing" else ["-d", str(tmp_path), "--size", "1PB"]
    result = sc("--use", *where, *words)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("sc: error: ") and said in result.stderr, result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr


def test_no_command_names_every_command():
    from sharedcache.cli.parser import ACTIONS

    result = sc()
    assert result.returncode == 2
    named = re.findall(r"-*[a-z]+", result.stderr.split(":", 2)[2])
    assert all(action in named or f"--{action}" in named for action in ACTIONS), result.stderr


def test_help_and_version_print_and_exit_0():
    import sharedcache

    version = sc("--version")
    assert (version.returncode, version.stdout, version.stderr) == (
        0, f"sc (shared-cache) {sharedcache.__version__}\n", "")
    helped = sc("--help")
    assert helped.returncode == 0 and "--version" in helped.stdout and "--use" in helped.stdout


def test_checksum_mismatch_commits_nothing(dirs, tarball):
    path, _md5 = tarball
    wrong = "0" * 32
    result = sc("--use", "-n", "repo", "-d", str(dirs[0]), f"file:{path}", f"md5:{wrong}", "tar")
    assert result.returncode == 1
    assert "repo" in result.stderr and "md5" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (user_dir(dirs[0]) / "repo").exists()
    # Nothing ready: the one row is the failure, with no data.
    listed = json.loads(sc("list", "--json", "-d", str(dirs[0])).stdout)
    assert [(row["name"], row["state"], row["path"], row["size"]) for row in listed] == [("repo", "failed", None, None)]
    leftovers = list((control(dirs[0]) / "stage").iterdir())
    assert leftovers == []
    # A later use tries afresh and succeeds with the right checksum.
    with Sleeper() as owner:
        assert sc("--use", "-n", "repo", "-d", str(dirs[0]), "--pid", str(owner.pid), *recipe(tarball)).returncode == 0


def test_unuse_without_a_use_is_an_error(dirs, tarball):
    with Sleeper() as owner, Sleeper() as stranger:
        args = ["-n", "repo", "-d", str(dirs[0]), *recipe(tarball)]
        assert sc("--use", "--pid", str(owner.pid), *args).returncode == 0
        result = sc("--unuse", "--pid", str(stranger.pid), *args)
        assert result.returncode == 1 and str(stranger.pid) in result.stderr
        # No process has that pid, and no use names one that had it.
        result = sc("--unuse", "--pid", "999999999", *args)
        assert result.returncode == 1 and "process 999999999 holds no use" in result.stderr, result.stderr
        assert sc("--unuse", "-n", "nothere", "-d", str(dirs[0]), "file:/x").returncode == 1


def test_unuse_of_a_process_that_has_ended_releases_its_use(dirs, tarball):
    # A job's epilogue runs after the job: its release must not wait for gc.
    args = ["-n", "repo", "-d", str(dirs[0]), *recipe(tarball)]
    with Sleeper() as survivor:
        ended, other = Sleeper(), Sleeper()
        for owner in (ended, survivor, other):
            assert sc("--use", "--pid", str(owner.pid), *args).returncode == 0
        ended.kill()
        other.kill()
        result = sc("--unuse", "--pid", str(ended.pid), *args)
        assert result.returncode == 0, result.stderr
        # The ended processes' uses went (a release reclaims the dead), the live one's stays.
        leases = [p.name.split(":")[1] for p in (control(dirs[0]) / "objects" / "repo" / "leases").iterdir()]
        assert leases == [str(survivor.pid)]
        again = sc("--unuse", "--pid", str(ended.pid), *args)
        assert again.returncode == 1 and f"process {ended.pid} holds no use" in again.stderr, again.stderr
        assert sc("--unuse", "--pid", str(survivor.pid), *args).returncode == 0
        assert not (user_dir(dirs[0]) / "repo").exists()


def test_dead_owner_lease_is_reclaimed_and_repository_deleted(dirs, tarball):
    args = ["-n", "repo", "-d", str(dirs[0]), *recipe(tarball)]
    with Sleeper() as survivor:
        victim = Sleeper()
        assert sc("--use", "--pid", str(victim.pid), *args).returncode == 0
        assert sc("--use", "--pid", str(survivor.pid), *args).returncode == 0
        victim.kill()
        listing = json.loads(sc("list", "--json", "-d", str(dirs[0])).stdout)
        assert listing[0]["users"] == [survivor.pid]
        # The survivor's release is the last live one: the repository goes.
        assert sc("--unuse", "--pid", str(survivor.pid), *args).returncode == 0
        assert not (user_dir(dirs[0]) / "repo").exists()
    # A repository whose only user died is deleted by gc.
    lone = Sleeper()
    assert sc("--use", "--pid", str(lone.pid), *args).returncode == 0
    lone.kill()
    assert sc("gc", "-d", str(dirs[0])).returncode == 0
    assert json.loads(sc("list", "--json", "-d", str(dirs[0])).stdout) == []
    assert not (user_dir(dirs[0]) / "repo").exists()


def test_run_exports_path_holds_use_and_returns_status(dirs, tarball, tmp_path):
    args = ["-n", "repo", "-d", str(dirs[0]), *recipe(tarball)]
    script = 'test -f "$SC_PATH/data/part-000.bin" && exit 7; exit 3'
    result = sc("run", *args, "--", "sh", "-c", script)
    assert result.returncode == 7, result.stderr
    assert not (user_dir(dirs[0]) / "repo").exists(), "released when the command ended"
    missing = sc("run", *args, "--", "/no/such/command")
    assert missing.returncode == 127 and "cannot run" in missing.stderr
    # Found but not runnable (no execute bit, a directory): 126, as a shell says.
    for unrunnable in (str(tarball[0]), str(dirs[0])):
        refused = sc("run", *args, "--", unrunnable)
        assert refused.returncode == 126 and "cannot run" in refused.stderr, refused.stderr
    # An empty name names no command: a usage error (it was 'cannot run : Permission denied').
    empty = sc("run", *args, "--", "")
    assert empty.returncode == 2 and "run needs '-- COMMAND [ARG...]'" in empty.stderr, empty.stderr
    # A name with a newline and a terminal control is one line, escaped (it was printed raw).
    odd = sc("run", *args, "--", "no\nsuch\x1b[7mcmd")
    assert (odd.returncode, odd.stderr) == (
        127, "sc: error: cannot run no\\nsuch\\x1b[7mcmd: No such file or directory\n"), odd.stderr


def test_a_name_too_long_and_a_base_path_too_long_are_said_so(dirs, tarball, tmp_path):
    # A name past 200 bytes was refused without the limit, and a base whose path the system
    # refuses as too long was called missing.
    long_name = sc("--use", "-d", str(dirs[0]), "-n", "n" * 201, *recipe(tarball))
    assert long_name.returncode == 2 and "of at most 200 bytes of UTF-8" in long_name.stderr, long_name.stderr
    base = tmp_path / ("b" * 300)
    too_long = sc("--use", "-d", str(base), *recipe(tarball))
    assert too_long.returncode == 1, too_long.stderr
    assert too_long.stderr.rstrip().endswith(f"{base} (file name too long)"), too_long.stderr


def test_run_whose_command_releases_the_use_itself_exits_with_the_command_s_status(dirs, tarball):
    # The command's `sc --unuse` (run by sc run, or exec'd by its shell) finds sc run as its
    # job, and releases sc run's use: sc run's own release then failed, "lease ... holds no
    # use" with a usage hint, and exited 2 where the command had exited 0.
    args = ["-n", "repo", "-d", str(dirs[0]), *recipe(tarball)]
    for command in ([*SC, "--unuse", *args], ["sh", "-c", 'exec "$@"; exit 9', "sh", *SC, "--unuse", *args]):
        result = sc("run", *args, "--", *command)
        assert (result.returncode, result.stderr) == (0, ""), (command, result.stderr)
        listed = json.loads(sc("list", "--json", "-d", str(dirs[0])).stdout)
        assert [row["users"] for row in listed if row["name"] == "repo"] in ([], [[]]), listed
        # (Its command held the entry's lock as it released the use: gc deletes it, unused now.)
        assert sc("gc", "-d", str(dirs[0])).returncode == 0
        assert json.loads(sc("list", "--json", "-d", str(dirs[0])).stdout) == []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2])
def test_run_passes_a_signal_sent_to_sc_on_to_its_command(dirs, tarball, tmp_path, sig):
    # SIGUSR1 and SIGUSR2 (a batch system's warning that time is almost up) ended sc run by
    # their default action, leaving its command running as an orphan and its use to gc.
    # SIGINT, SIGTERM and SIGHUP sent by a process (kill, a batch system) are passed on as well.
    args = ["-n", "repo", "-d", str(dirs[0]), *recipe(tarball)]
    ready, heard = tmp_path / "ready", tmp_path / "heard"
    script = textwrap.dedent(f"""
        import os, signal, time
        signal.signal({int(sig)}, lambda s, _: open({str(heard)!r}, "a").write(f"{{s}} "))
        open({str(ready)!r}, "w").close()
        end = time.monotonic() + 30
        while not os.path.exists({str(heard)!r}) and time.monotonic() < end:
            time.sleep(0.02)
    """)
    proc = sc_start("run", *args, "--", sys.executable, "-c", script, default_signals=True)
    try:
        wait_for(ready.exists, what="the command to start")
        os.kill(proc.pid, sig)
        assert proc.wait(30) == 0
    finally:
        stop_process(proc)
    assert heard.read_text() == f"{int(sig)} "
    assert not (user_dir(dirs[0]) / "repo").exists(), "released when the command ended"


#: A ``sitecustomize`` that pauses the process, as :func:`scutil.pause_at` does, as the fork of
#: its first command returns (no audit event comes between the fork and the return of Popen).
PAUSED_AS_THE_COMMAND_IS_FORKED = """
import os, sys, time
def _profile(frame, event, arg):
    if event == "c_return" and getattr(arg, "__name__", "") == "fork_exec":
        sys.setprofile(None)
        open(os.environ["SC_TEST_PAUSED"], "w").close()
        end = time.monotonic() + 30
        while not os.path.exists(os.environ["SC_TEST_GO"]) and time.monotonic() < end:
            time.sleep(0.005)
sys.setprofile(_profile)
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2])
def test_run_passes_on_a_signal_that_comes_as_its_command_starts(dirs, tarball, tmp_path, sig):
    # A signal that came between the fork of the command and the installation of the handlers
    # that pass signals on ended sc (SIGINT as an interrupt, releasing the use), and the command
    # ran on, never told: a batch system's SIGTERM left it running past the job's end.  SIGUSR1
    # and SIGUSR2 (a batch system's "time is almost up") were dropped there, unsaid.
    args = ["-n", "repo", "-d", str(dirs[0]), *recipe(tarball)]
    assert sc("--use", "--keep", *args).returncode == 0  # ready: no population forks
    assert sc("--unuse", "--keep", *args).returncode == 0
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(PAUSED_AS_THE_COMMAND_IS_FORKED)
    paused, go = tmp_path / "paused", tmp_path / "go"
    # (Its output to a file: an orphaned command would hold a pipe open for its whole life.)
    errors = tmp_path / "stderr"
    with errors.open("w") as stderr:
        proc = subprocess.Popen([*DEFAULT_SIGNALS, *SC, "run", *args, "--", "sleep", "120"], stderr=stderr,
                                env=sc_env(PYTHONPATH=os.pathsep.join([str(site), SRC]), SC_TEST_PAUSED=str(paused),
                                           SC_TEST_GO=str(go)))
    command = None
    try:
        wait_for(paused.exists, what="the command's fork")
        [command] = (int(p) for p in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split())
        os.kill(proc.pid, sig)
        go.touch()
        assert proc.wait(30) == -sig, errors.read_text()
        wait_for(lambda: ended(command), timeout=10, what="the command to get the signal")
    finally:
        stop_process(proc)
        if command is not None and not ended(command):
            os.kill(command, signal.SIGKILL)
    [row] = json.loads(sc("list", "--json", "-d", str(dirs[0])).stdout)
    assert row["users"] == [] and not row["in_use"], row


def slow_download(origin, base: Path) -> list[str]:  # type: ignore[no-untyped-def]
    """The arguments of a use of repository "blob" in ``base``: a download from ``origin`` that
    takes a second or so."""
    payload = os.urandom(400_000)
    url = origin.add("/blob.bin", payload)
    origin.rate = 400_000
    return ["-n", "blob", "-d", str(base), f"http:{url}", "sha256:" + hashlib.sha256(payload).hexdigest()]


def signalled_as_it_populates(command: list[str], base: Path, *signals: signal.Signals) -> tuple[int, str, str]:
    """Run ``command`` (an sc of a :func:`slow_download`), sending it ``signals`` once its population
    has begun; return its status, output and error output."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=sc_env())
    try:
        wait_for((control(base) / "populate" / "blob.json").exists, what="the population")
        for sig in signals:
            os.kill(proc.pid, sig)
        out, err = proc.communicate(timeout=60)
    finally:
        stop_process(proc)
    return proc.returncode, out, err


@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGUSR2])
def test_run_is_not_ended_by_a_warning_that_comes_while_it_populates(origin, base, tmp_path, sig):
    # The warning came before the command ran: its default action ended sc (status 138), which
    # left its population for a takeover and never ran the command.  It is not passed on (a
    # command just started has no handler for it yet): sc says so, and the command runs.
    args = slow_download(origin, base)
    ran = tmp_path / "ran"
    status, _, err = signalled_as_it_populates([*SC, "run", *args, "--", "touch", str(ran)], base, sig)
    assert status == 0, err
    assert err == f"sc: {sig.name} came before the command ran: not passed on\n"
    assert ran.exists()
    assert origin.stats("/blob.bin").gets == 1


def ignoring(*signals: signal.Signals) -> list[str]:
    """A prefix that starts a command with ``signals`` ignored, as ``nohup`` (SIGHUP) and a
    script's background job (SIGINT, SIGQUIT) do: an ignored signal stays so across exec."""
    return ["env", f"--ignore-signal={','.join(sig.name[3:] for sig in signals)}"]


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2])
def test_run_leaves_a_signal_its_caller_ignores_ignored(dirs, tarball, tmp_path, sig):
    # `nohup sc run ...`: sc caught the SIGHUP that nohup ignored, passed it on to its command,
    # started with its default action, and the command died of it (sc exited 129).  A script's
    # background job (SIGINT ignored) was ended so by a Ctrl-C to the script's process group.
    # As a shell does, sc leaves it ignored: it passes it on to no one, and the command starts
    # with it ignored.  The others are still passed on (here the marker, which ends the command).
    args = ["-n", "repo", "-d", str(dirs[0]), *recipe(tarball)]
    marker = signal.SIGUSR1 if sig != signal.SIGUSR1 else signal.SIGUSR2
    ignored_at_start, ready, heard = tmp_path / "ignored", tmp_path / "ready", tmp_path / "heard"
    script = textwrap.dedent(f"""
        import os, signal, time
        status = open("/proc/self/status").read()
        open({str(ignored_at_start)!r}, "w").write(status.split("SigIgn:")[1].split()[0])
        heard = []
        for number in ({int(sig)}, {int(marker)}):
            signal.signal(number, lambda s, _: heard.append(s))
        open({str(ready)!r}, "w").close()
        end = time.monotonic() + 30
        while {int(marker)} not in heard and time.monotonic() < end:
            time.sleep(0.02)
        open({str(heard)!r}, "w").write(" ".join(map(str, heard)))
    """)
    proc = subprocess.Popen([*ignoring(sig), *SC, "run", *args, "--", sys.executable, "-c", script],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=sc_env())
    try:
        wait_for(ready.exists, what="the command to start")
        # The command's ignored signal comes first, then the marker: passed on, it would come first.
        os.kill(proc.pid, sig)
        os.kill(proc.pid, marker)
        _, err = proc.communicate(timeout=30)
    finally:
        stop_process(proc)
    assert int(ignored_at_start.read_text(), 16) & (1 << (sig - 1)), "the command started with it ignored"
    assert (proc.returncode, heard.read_text()) == (0, str(int(marker))), err
    assert err == ""
    assert not (user_dir(dirs[0]) / "repo").exists(), "released when the command ended"


@pytest.mark.parametrize("command", ["run", "use"])
def test_a_population_is_not_ended_by_signals_its_caller_ignores(origin, base, tmp_path, command):
    # A nohup'd population (or a script's background job's) goes on through the hangup (the
    # interrupt, the warning) it ignores, and holds its use as any other: the command runs, or
    # the path is given, and sc says nothing of a signal it never heeded.
    args = slow_download(origin, base)
    ran = tmp_path / "ran"
    taken = ["run", *args, "--", "touch", str(ran)] if command == "run" else ["--use", *args]
    signals = (signal.SIGHUP, signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)
    status, out, err = signalled_as_it_populates([*ignoring(*signals), *SC, *taken], base, *signals)
    assert (status, err) == (0, ""), err
    assert origin.stats("/blob.bin").gets == 1
    rows = json.loads(sc("list", "--json", "-d", str(base)).stdout)
    if command == "run":
        assert ran.exists()
        assert rows == [], "released (and deleted) when the command ended"
    else:
        [row] = rows
        assert out == f"{user_dir(base) / 'blob'}\n"
        assert row["state"] == "ready" and len(row["users"]) == 1, row
        assert sc("--unuse", "--pid", str(os.getpid()), *args).returncode == 0


#: A login session in miniature: a session leader whose controlling terminal is its standard
#: input runs its arguments in the foreground, in its own process group (as a shell without job
#: control does), shrugging off Ctrl-C itself.
TERMINAL_SESSION = textwrap.dedent("""
    import fcntl, signal, subprocess, sys, termios
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)
    signal.signal(signal.SIGINT, lambda *_: None)
    sys.exit(subprocess.call(sys.argv[1:]))
""")


@pytest.mark.parametrize("how", ["ctrl-c", "hangup", "ctrl-c as the command starts"])
def test_run_does_not_pass_on_a_signal_the_terminal_sent_its_command_too(dirs, tarball, tmp_path, how):
    # The terminal signals its whole foreground process group (Ctrl-C; a hangup as the session
    # ends), sc run's command with sc: sc passed the signal on too, and its command got it twice,
    # which many programs take as "abort now, skip the clean-up".  So did a Ctrl-C that came
    # while sc started its command, before it took signals with what tells a terminal's apart.
    sig = signal.SIGHUP if how == "hangup" else signal.SIGINT
    args = ["-n", "repo", "-d", str(dirs[0]), *recipe(tarball)]
    ready, heard = tmp_path / "ready", tmp_path / "heard"
    # Each delivery writes a byte to the wakeup pipe (Python runs its handler once for two that
    # come close together).  A signal that is pending still when another comes is not delivered
    # twice, so sc passing one on waits (see the sitecustomize) until its command has its own:
    # at its first kill, or, as the command starts, from the fork on.
    script = textwrap.dedent(f"""
        import os, select, signal, time
        read, write = os.pipe()
        os.set_blocking(write, False)
        signal.set_wakeup_fd(write, warn_on_full_buffer=False)
        signal.signal({int(sig)}, lambda *_: None)
        open({str(ready)!r} + ".new", "w").write(str(os.getpid()))
        os.rename({str(ready)!r} + ".new", {str(ready)!r})
        select.select([read], [], [], 30)
        open(os.environ["SC_TEST_GO"], "w").close()
        time.sleep(1)  # time for a second one to come
        open({str(heard)!r}, "w").write(str(os.read(read, 100).count({int(sig)})))
    """)
    site = tmp_path / "site"
    site.mkdir()
    starting = how == "ctrl-c as the command starts"
    (site / "sitecustomize.py").write_text(PAUSED_AS_THE_COMMAND_IS_FORKED if starting else pause_at('event == "os.kill"'))
    env = sc_env(PYTHONPATH=os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])),
                 SC_TEST_PAUSED=str(tmp_path / "paused"), SC_TEST_GO=str(tmp_path / "go"))
    master, terminal = os.openpty()
    try:
        session = subprocess.Popen(
            [sys.executable, "-c", TERMINAL_SESSION, *DEFAULT_SIGNALS, *SC, "run", *args, "--", sys.executable,
             "-c", script], stdin=terminal, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
            start_new_session=True)
    finally:
        os.close(terminal)
    started: list[int] = []
    try:
        wait_for(ready.exists, what="the command to start")
        command = int(ready.read_text())
        started.append(command)
        [sc_pid] = (int(p) for p in Path(f"/proc/{session.pid}/task/{session.pid}/children").read_text().split())
        started.append(sc_pid)
        if sig == signal.SIGINT:
            os.write(master, termios.tcgetattr(master)[6][termios.VINTR])
            _, err = session.communicate(timeout=30)
            assert session.returncode == 0, err
        else:
            os.kill(session.pid, signal.SIGKILL)  # the session ends: its terminal hangs up
            session.communicate(timeout=30)
            wait_for(lambda: ended(sc_pid), what="sc run to end")
        assert heard.read_text() == "1", f"the command got {heard.read_text()} of the terminal's {sig.name}"
    finally:
        stop_process(session)
        for pid in started:
            if not ended(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        os.close(master)
    assert not (user_dir(dirs[0]) / "repo").exists(), "released when the command ended"


def ended(pid: int) -> bool:
    """Whether process ``pid`` has exited (gone, or a zombie not yet reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except FileNotFoundError:
        return True
    return stat[stat.rindex(b")") + 2 :].startswith(b"Z")


def test_run_command_keeps_its_data_when_sc_is_killed_and_frees_it_when_it_ends(dirs, tarball, tmp_path):
    """sc run killed by SIGKILL: its command goes on, and its data stays until it (and what it
    started) ends; then gc deletes the repository."""
    args = ["-n", "repo", "-d", str(dirs[0]), *recipe(tarball)]
    flags = tmp_path / "flags"
    flags.mkdir()
    script = (f'sleep 600 & echo $! > {flags}/worker; echo $$ > {flags}/command; '
              f'while [ ! -e {flags}/go ]; do sleep 0.05; done; '
              f'test -f "$SC_PATH/data/part-000.bin" && touch {flags}/read; wait')
    proc = sc_start("run", *args, "--", "sh", "-c", script)
    command = worker = None
    try:
        deadline = time.monotonic() + 30
        while not (flags / "worker").exists() or not (flags / "command").exists():
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        command, worker = (int((flags / f).read_text()) for f in ("command", "worker"))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        assert sc("gc", "-d", str(dirs[0])).returncode == 0
        # Its only use is now the command's lock, which the listing shows (its USERS said "-").
        [row] = json.loads(sc("list", "--json", "-d", str(dirs[0])).stdout)
        assert (row["users"], row["in_use"]) == ([], True)
        assert sc("list", "-d", str(dirs[0])).stdout.splitlines()[1].endswith(" a lock")
        with Sleeper() as other:  # another job's last release must not delete it either
            assert sc("--use", "--pid", str(other.pid), *args).returncode == 0
            assert sc("--unuse", "--pid", str(other.pid), *args).returncode == 0
        (flags / "go").touch()
        while not (flags / "read").exists():
            assert time.monotonic() < deadline, "the command lost its data when sc run was killed"
            time.sleep(0.05)
        os.kill(command, signal.SIGKILL)
        # The command's own child still holds the data.
        assert sc("gc", "-d", str(dirs[0])).returncode == 0
        assert (user_dir(dirs[0]) / "repo" / "data" / "part-000.bin").exists()
        os.kill(worker, signal.SIGKILL)
        while not ended(worker):
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid in (command, worker):
            if pid is not None:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
    assert sc("gc", "-d", str(dirs[0])).returncode == 0
    assert not (user_dir(dirs[0]) / "repo").exists()


#: Starts its arguments with SIGCHLD ignored, as a parent that ignores it leaves it to what it
#: runs (an ignored signal stays ignored across exec).
IGNORING_SIGCHLD = "import os, signal, sys; signal.signal(signal.SIGCHLD, signal.SIG_IGN); os.execvp(sys.argv[1], sys.argv[1:])"


def test_run_exits_with_its_command_s_status_when_started_with_sigchld_ignored(dirs, tarball):
    # SIGCHLD ignored makes the kernel reap sc's children itself: Popen found no status
    # (ECHILD) and took it for 0, so a failed or killed command was reported as a success.
    args = ["-n", "repo", "-d", str(dirs[0]), *recipe(tarball)]
    for script, status in (("exit 7", 7), ("sleep 1.2; exit 7", 7), ("kill -KILL $$", -signal.SIGKILL)):
        result = subprocess.run([sys.executable, "-c", IGNORING_SIGCHLD, *SC, "run", *args, "--", "sh", "-c", script],
                                capture_output=True, text=True, timeout=60, env=sc_env())
        assert result.returncode == status, (script, result.stderr)
    assert not (user_dir(dirs[0]) / "repo").exists(), "released when the command ended"


def test_run_ends_by_the_signal_that_ended_its_command(dirs, tarball, tmp_path):
    # A shell that gets Ctrl-C while it waits for a command goes on only if the command did not
    # die of it (it handled it): sc run exited 130 instead of dying of SIGINT as its command
    # had, and a script running sc run in a loop went on to the next iteration.
    args = ["-n", "repo", "-d", str(dirs[0]), *recipe(tarball)]
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT):
        result = subprocess.run([*DEFAULT_SIGNALS, *SC, "run", *args, "--", "sh", "-c", f"kill -{sig.name[3:]} $$"],
                                capture_output=True, text=True, timeout=60, env=sc_env(), cwd=tmp_path)
        assert result.returncode == -sig, (sig, result.returncode, result.stderr)
        assert not list(tmp_path.glob("core*")), "sc dumped no core of its own"
    loop = textwrap.dedent(f"""
        for i in 1 2; do
            {" ".join(map(shlex_quote, [*SC, "run", *args]))} -- sh -c 'echo $$ > {tmp_path}/command; exec sleep 30'
            echo "went on after $?"
        done
    """)
    shell = subprocess.Popen([*DEFAULT_SIGNALS, "bash", "-c", loop], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=sc_env(), start_new_session=True)

    def sleeping() -> bool:
        # The command itself, not sh before it: a Ctrl-C that reaches dash between two commands
        # is caught by it and lost (no sc involved), and the test waited for sleep to end.
        pid = (tmp_path / "command").read_text().strip() if (tmp_path / "command").exists() else ""
        try:
            return pid != "" and Path(f"/proc/{pid}/comm").read_text() == "sleep\n"
        except FileNotFoundError:
            return False

    try:
        wait_for(sleeping, what="the command to start")
        os.killpg(shell.pid, signal.SIGINT)  # as a terminal's Ctrl-C reaches its foreground group
        out, err = shell.communicate(timeout=30)
    finally:
        stop_process(shell)
    assert "went on" not in out, (out, err)
    assert not (user_dir(dirs[0]) / "repo").exists(), "released when the command ended"


def test_python_api_use(dirs, tarball):
    code = textwrap.dedent(f"""
        import sys, sharedcache
        with sharedcache.use({recipe(tarball)!r}[0], *{recipe(tarball)!r}[1:], name="api", directories={str(dirs[0])!r}) as path:
            print(path, (path / "data/part-000.bin").stat().st_size)
            with sharedcache.use(" ".join({recipe(tarball)!r}), name="api", directories={str(dirs[0])!r}) as again:
                assert again == path
        print(path.exists())
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(user_dir(dirs[0]) / "api"), str(len(FILES["data/part-000.bin"])), "False"]


def test_uses_of_ever_new_bases_keep_no_descriptor_of_those_removed(tmp_path, tarball):
    # A program using a fresh base each time (a test suite's tmp_path), removed after, kept the
    # index, its journals and populate/ of every one open: it ran out of descriptors within a
    # few dozen uses, and held the deleted files' space.  So did one whose base was emptied
    # between uses, one descriptor a use.
    code = textwrap.dedent(f"""
        import json, os, shutil, sharedcache

        def open_files():
            found = []
            for fd in os.listdir("/proc/self/fd"):
                try:
                    found.append(os.readlink(f"/proc/self/fd/{{fd}}"))
                except OSError:
                    pass  # the listing's own descriptor
            return found

        def use(base):
            with sharedcache.use(*{recipe(tarball)!r}, name="r", directories=base) as path:
                assert (path / "data/part-000.bin").exists()

        counts = {{}}
        for how in ("new bases", "one base emptied"):
            for i in range(30):
                base = {str(tmp_path)!r} + "/" + (f"base{{i}}" if how == "new bases" else "emptied")
                os.makedirs(base, exist_ok=True)
                use(base)
                shutil.rmtree(base)
                if i == 0:
                    first = len(open_files())
            files = open_files()
            counts[how] = [first, len(files), sum(f.endswith("(deleted)") for f in files)]
        print(json.dumps(counts))
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    for how, (first, last, deleted) in json.loads(result.stdout).items():
        # (At most what the cache of the last use holds: its index, two journals and populate/.)
        assert last <= first and deleted <= 4, f"{how}: {first} descriptors open after the first use, " \
                                               f"{last} after the last, {deleted} of deleted files"


def test_threads_that_remove_their_fresh_bases_after_use_never_find_a_file_gone_under_them(tmp_path, tarball):
    # Another thread's use() drops the cache of a base from the table (the least recently used,
    # or one whose cache is gone) and may be the last to let it go: its connection to the index
    # closed there, and SQLite's last close removed the index's journals by name, as the owner
    # of the base was removing it: shutil.rmtree failed on a file it had listed.
    code = textwrap.dedent(f"""
        import json, os, shutil, tempfile, threading, sharedcache

        failed = []

        def uses():
            for _ in range(150):
                base = tempfile.mkdtemp(dir={str(tmp_path)!r})
                with sharedcache.use(*{recipe(tarball)!r}, name="r", directories=base) as path:
                    assert (path / "data/part-000.bin").exists()
                try:
                    shutil.rmtree(base)
                except OSError as e:
                    failed.append(str(e))

        threads = [threading.Thread(target=uses) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        print(json.dumps([failed, len(os.listdir("/proc/self/fd"))]))
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=110)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    failed, descriptors = json.loads(result.stdout)
    assert failed == [], f"{len(failed)} removals of a base of 1200 failed, the first: {failed[0]}"
    # (Its standard streams, the listing's own, and what the caches the table keeps hold: the
    # index, its two journals and populate/ each.)
    assert descriptors <= 4 + 4 * KEPT_CACHES, f"{descriptors} descriptors open at the end"


def test_a_use_in_a_generator_left_unfinished_is_released_at_exit(dirs, tarball):
    # The interpreter finalises the generator as it exits, when imports fail: the release
    # raised ("Exception ignored in generator") and left the repository's link dangling.
    code = textwrap.dedent(f"""
        import sharedcache
        def paths():
            with sharedcache.use(*{recipe(tarball)!r}, name="api", directories={str(dirs[0])!r}) as path:
                yield path
        kept = paths()
        print(next(kept))
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert result.stdout.strip() == str(user_dir(dirs[0]) / "api")
    assert not os.path.lexists(user_dir(dirs[0]) / "api")
    assert json.loads(sc("list", "--json", "-d", str(dirs[0])).stdout) == []


def test_list_and_gc_human_output(dirs, tarball):
    with Sleeper() as owner:
        assert sc("--use", "-n", "repo", "-d", str(dirs[0]), "--pid", str(owner.pid), *recipe(tarball)).returncode == 0
        listing = sc("list", "-d", str(dirs[0]))
        assert listing.returncode == 0
        assert "repo" in listing.stdout and str(owner.pid) in listing.stdout and "ready" in listing.stdout
        gc = sc("gc", "-d", str(dirs[0]))
        assert gc.returncode == 0 and str(dirs[0]) in gc.stdout
        # -q prints nothing but errors: gc's report ("nothing to do" here) is no error.
        quiet = sc("gc", "-q", "-d", str(dirs[0]))
        assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, "", "")


def test_list_and_gc_say_a_base_that_d_names_holds_no_cache_and_fail_for_one_that_is_not_there(
        dirs, tarball, tmp_path):
    # `sc gc -d` and `sc list -d` of a directory that is not there (a typo) exited 0 saying
    # nothing (gc printed nothing, list its header alone), as they did for a directory without a
    # cache: a user or a cron job could not tell either from a clean cache.
    holding, empty, typo = *dirs, tmp_path / "typo"
    everything = f"{typo}:{holding}:{empty}"
    no_cache = f"{empty}: no cache of yours here"
    with Sleeper() as owner:
        assert sc("--use", "-n", "repo", "-d", str(holding), "--pid", str(owner.pid), *recipe(tarball)).returncode == 0
        collected = sc("gc", "-d", str(empty))
        assert (collected.returncode, collected.stdout, collected.stderr) == (0, f"{no_cache}\n", ""), collected
        group = sc("gc", "--group", str(os.getgid()), "-d", str(empty))
        assert group.stdout == f"{empty}: no cache of group {os.getgid()} here\n", group
        listed = sc("list", "-d", str(empty))
        assert (listed.returncode, listed.stderr) == (0, f"sc: {no_cache}\n"), listed
        # Not there: no base, sc never makes one; skipped saying so, and the others looked into.
        for command, shown in ((["gc"], f"{holding}: nothing to do"), (["list"], str(user_dir(holding) / "repo"))):
            done = sc(*command, "-d", everything)
            assert done.returncode == 1 and shown in done.stdout, done
            assert done.stderr.splitlines()[0] == f"sc: skipping {typo}: missing", done.stderr
            quiet = sc("-q", *command, "-d", everything)
            assert (quiet.returncode, quiet.stderr) == (1, f"sc: error: skipping {typo}: missing\n"), quiet
            # Candidates of a setting, as the defaults (/var/tmp in a container), need not be
            # there, nor hold a cache: as before, not a word of them.
            unnamed = sc(*command, env=sc_env(SC_DIRECTORIES=everything))
            assert (unnamed.returncode, unnamed.stderr) == (0, "") and shown in unnamed.stdout, unnamed
            assert str(empty) not in unnamed.stdout, unnamed.stdout


@contextmanager
def paused_population(base: Path, tmp_path: Path, *args: str) -> Iterator[subprocess.Popen]:  # type: ignore[type-arg]
    """``sc --use -d base ARGS`` paused in its population (its status record written, its lock
    held), as it makes its work directory; it goes on, and is waited for, on exit."""
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(pause_at('event == "os.mkdir" and str(args[0]).endswith(".work")'))
    paused, go = tmp_path / "paused", tmp_path / "go"
    populator = sc_start("--use", "-d", str(base), *args, env=sc_env(
        PYTHONPATH=os.pathsep.join([str(site), SRC]), SC_TEST_PAUSED=str(paused), SC_TEST_GO=str(go)))
    try:
        wait_for(paused.exists, what="the populator")
        yield populator
    finally:
        go.touch()
        finish([populator])
        paused.unlink(missing_ok=True)
        go.unlink(missing_ok=True)


def test_the_way_to_free_the_name_of_a_kept_repository_that_the_error_gives_works(dirs, tmp_path):
    # A new version of the data under the name of a kept one: the error sent the user to a
    # budget that evicts it (which stays stored for the base) or to sc gc, which never deletes a
    # kept repository; no command deleted one repository by its name.
    old, new = tmp_path / "v1.bin", tmp_path / "v2.bin"
    old.write_bytes(b"version 1")
    new.write_bytes(b"version 2")
    args = ["-n", "dataset", "-d", str(dirs[0])]
    assert sc("--use", "--keep", *args, f"file:{old}").returncode == 0
    assert sc("--unuse", *args, f"file:{old}").returncode == 0
    refused = sc("--use", "--keep", *args, f"file:{new}")
    assert refused.returncode == 2, refused
    assert "kept or not, once unused, by sc gc --evict=dataset (with the --directories or --group of the use)" \
        in refused.stderr, refused.stderr
    assert sc("gc", "-d", str(dirs[0])).returncode == 0
    assert sc("--use", "--keep", *args, f"file:{new}").returncode == 2, "gc deleted a kept repository"
    # As it says: evicted by its name, with its link, and no budget left behind.
    evicted = sc("gc", "-d", str(dirs[0]), "--evict", "dataset")
    assert (evicted.returncode, evicted.stderr) == (0, ""), evicted
    assert f"{dirs[0]}: evicted: 'dataset'" in evicted.stdout.splitlines()[0], evicted.stdout
    assert not (user_dir(dirs[0]) / "dataset").is_symlink()
    assert not (control(dirs[0]) / "budget").exists()
    used = sc("--use", "--keep", *args, f"file:{new}")
    assert used.returncode == 0, used.stderr
    assert (Path(used.stdout.strip()) / "v2.bin").read_bytes() == b"version 2"
    assert sc("--unuse", *args, f"file:{new}").returncode == 0


def test_gc_evict_deletes_nothing_under_a_live_use_and_evicts_the_rest_of_its_list(dirs, tarball, tmp_path):
    # Each name refused is one line (exit status 1); the others of the list are evicted all the
    # same.  In use: by a job's lease (named by its pid), or only by the lock that the command
    # of a killed sc run inherited.
    base = dirs[0]
    flags = tmp_path / "flags"
    flags.mkdir()
    script = (f"echo $$ > {flags}/command; i=0; "
              f"while [ ! -e {flags}/go ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done")
    run = sc_start("run", "--keep", "-n", "locked", "-d", str(base), *recipe(tarball), "--", "sh", "-c", script)
    command = None
    try:
        wait_for(lambda: (flags / "command").exists() and (flags / "command").read_text().strip() != "",
                 what="sc run's command")
        command = int((flags / "command").read_text())
        os.kill(run.pid, signal.SIGKILL)
        run.wait(10)
        with Sleeper() as job:
            for name in ("held", "idle"):
                assert sc("--use", "--keep", "-d", str(base), "--pid", str(job.pid), "-n", name,
                          *recipe(tarball)).returncode == 0
            assert sc("--unuse", "-d", str(base), "--pid", str(job.pid), "-n", "idle", *recipe(tarball)).returncode == 0
            evicting = sc("gc", "-d", str(base), *evict("held", "idle", "missing", "locked"))
            assert evicting.returncode == 1, evicting
            held, missing, locked = evicting.stderr.splitlines()
            assert held.startswith(f"sc: error: repository 'held' in {base} not evicted: ") \
                and held.endswith(f" is in use by process {job.pid}"), held
            assert missing == f"sc: error: no repository 'missing' in {base}", missing
            assert locked.startswith(f"sc: error: repository 'locked' in {base} not evicted: ") \
                and locked.endswith(" is in use (its lock is held)"), locked
            assert evicting.stdout.splitlines()[0].startswith(f"{base}: evicted: 'idle'"), evicting.stdout
            # Nothing of those in use was touched: their data, their links, their rows.
            for name in ("held", "locked"):
                check_tree(user_dir(base) / name, FILES)
            rows = {row["name"]: row for row in json.loads(sc("list", "--json", "-d", str(base)).stdout)}
            assert set(rows) == {"held", "locked"} and all(row["keep"] for row in rows.values()), rows
        # Its users gone, each goes.
        (flags / "go").touch()
        wait_for(lambda: ended(command), what="sc run's command to end")
        evicted = sc("gc", "-d", str(base), *evict("held", "locked"))
        assert (evicted.returncode, evicted.stderr) == (0, ""), evicted
        assert evicted.stdout.startswith(f"{base}: evicted: 'held', 'locked'"), evicted.stdout
        assert json.loads(sc("list", "--json", "-d", str(base)).stdout) == []
        assert not any(path.is_symlink() for path in user_dir(base).iterdir())
    finally:
        (flags / "go").touch()
        if command is not None and not ended(command):
            os.kill(command, signal.SIGKILL)
        if run.poll() is None:
            run.kill()
        run.wait(10)


def evict(*names: str) -> list[str]:
    """The options of ``sc gc`` that evict ``names``: one ``--evict`` to a name."""
    return [word for name in names for word in ("--evict", name)]


@pytest.mark.parametrize(("names", "why"), [(("",), "invalid repository name ''"),
                                           (("idle", "a/b"), "invalid repository name 'a/b'"),
                                           ((".hidden",), "invalid repository name '.hidden'")])
def test_gc_evict_of_a_name_no_repository_may_have_is_a_usage_error(dirs, tarball, names, why):
    # Refused before anything is evicted, the valid names given with it too.
    args = ["-d", str(dirs[0]), "-n", "idle", *recipe(tarball)]
    assert sc("--use", "--keep", *args).returncode == 0 and sc("--unuse", *args).returncode == 0
    refused = sc("gc", "-d", str(dirs[0]), *evict(*names))
    assert refused.returncode == 2 and refused.stdout == "", refused
    (line,) = refused.stderr.splitlines()
    assert line.startswith(f"sc: error: {why}"), line
    assert (user_dir(dirs[0]) / "idle").is_symlink()
    needs_one = sc("gc", "-d", str(dirs[0]), "--evict")
    assert (needs_one.returncode, needs_one.stderr) == (
        2, "sc: error: option --evict needs a value (NAME) (see 'sc --help')\n"), needs_one


@pytest.mark.parametrize(("name", "parts"), [
    ("it's a,b", {"it's a", "b", "it's", "a"}),
    # The remedy "sc gc --evict --" was refused, "--" read as the end of the options.
    ("--", set()),
    ("-v x", {"x"}),
])
def test_gc_evict_of_the_name_that_the_error_gives_evicts_that_repository_alone(dirs, tmp_path, name, parts):
    # --evict split its value at commas, though a name may hold one: the remedy of the error,
    # "sc gc --evict a,b", evicted the kept repositories 'a' and 'b' (in a group cache, other
    # members' data) and left 'a,b'; no command line evicted 'a,b'.
    old, new = tmp_path / "v1.bin", tmp_path / "v2.bin"
    old.write_bytes(b"version 1")
    new.write_bytes(b"version 2")
    env = sc_env(SC_DIRECTORIES=str(dirs[0]))  # (the remedy is pasted as it is: no -d to add)
    for kept in (name, *parts):
        assert sc("--use", "--keep", f"--name={kept}", f"file:{old}", env=env).returncode == 0
        assert sc("--unuse", f"--name={kept}", f"file:{old}", env=env).returncode == 0
    refused = sc("--use", f"--name={name}", f"file:{new}", env=env)
    assert refused.returncode == 2, refused
    remedy = re.search(r" by (sc gc --evict.+) \(with the --directories or --group of the use\)$", refused.stderr)
    assert remedy is not None and remedy[1] == f"sc gc --evict={shlex_quote(name)}", refused.stderr
    pasted = subprocess.run(["sh", "-c", f'sc() {{ {" ".join(map(shlex_quote, SC))} "$@"; }}; {remedy[1]}'],
                            capture_output=True, text=True, timeout=60, env=env)
    assert (pasted.returncode, pasted.stderr) == (0, ""), pasted
    assert pasted.stdout.startswith(f"{dirs[0]}: evicted: {name!r}\n"), pasted.stdout
    assert {row["name"] for row in json.loads(sc("list", "--json", env=env).stdout)} == parts
    assert sorted(path.name for path in user_dir(dirs[0]).iterdir() if path.is_symlink()) == sorted(parts)
    used = sc("--use", "-n", name, f"file:{new}", env=env)
    assert used.returncode == 0, used.stderr
    assert (Path(used.stdout.strip()) / "v2.bin").read_bytes() == b"version 2"
    assert sc("--unuse", "-n", name, f"file:{new}", env=env).returncode == 0


def test_gc_evict_evicts_the_name_from_every_candidate_base_that_holds_it(dirs, tarball):
    # Each base's repository of the name goes, with its link: not only the first one found.
    for base in dirs:
        args = ["-d", str(base), "-n", "twice", *recipe(tarball)]
        assert sc("--use", "--keep", *args).returncode == 0 and sc("--unuse", *args).returncode == 0
    evicted = sc("gc", "-d", f"{dirs[0]}:{dirs[1]}", "--evict", "twice")
    assert (evicted.returncode, evicted.stderr) == (0, ""), evicted
    reports = evicted.stdout.splitlines()
    for base in dirs:
        assert any(line.startswith(f"{base}: evicted: 'twice'") for line in reports), evicted.stdout
        assert json.loads(sc("list", "--json", "-d", str(base)).stdout) == [], base
        assert not (user_dir(base) / "twice").is_symlink(), base


def test_gc_evict_of_a_repository_being_populated_says_so_and_leaves_the_population(dirs, tarball, tmp_path):
    # A population under way is no repository to evict yet, but the name is there: the line
    # says it is being populated, not that there is no such repository.
    base = dirs[0]
    args = ["-n", "making", *recipe(tarball)]
    with paused_population(base, tmp_path, *args) as populator:
        refused = sc("gc", "-d", str(base), "--evict", "making")
        assert (refused.returncode, refused.stderr) == (
            1, f"sc: error: repository 'making' in {base} is being populated: not evicted\n"), refused
    assert populator.returncode == 0  # (made as it would have been)
    check_tree(user_dir(base) / "making", FILES)


def test_a_name_that_holds_another_recipe_is_a_usage_error_that_names_both(dirs, tarball, tmp_path, reachable_tmp):
    # It said "already exists with another loader stack", naming only the recipe there, with a
    # failure's status: the name is the caller's to change.  (The file's path is short, for the
    # message shows a long one cut in the middle, and how long tmp_path is depends on the runner.)
    other = reachable_tmp / "other.bin"
    other.write_bytes(b"other data")
    _, md5 = tarball
    with Sleeper() as owner:
        args = ["-n", "repo", "-d", str(dirs[0]), "--pid", str(owner.pid)]
        assert sc("--use", *args, *recipe(tarball)).returncode == 0
        refused = sc("--use", *args, f"file:{other}")
        assert refused.returncode == 2 and refused.stdout == "", refused
        (line,) = refused.stderr.splitlines()
        assert line.startswith(f"sc: error: repository 'repo' in {dirs[0]} holds another recipe ("), line
        assert f"md5:{md5[:12]}…" in line and md5 not in line, line  # the other recipe, short
        assert f"(file:{other})" in line and "choose another name;" in line and "last release of a use of its recipe" in line, line
        # Being populated with another recipe: said so, as it is not there yet.
        with paused_population(dirs[0], tmp_path, "-n", "made", *recipe(tarball)):
            refused = sc("--use", "-n", "made", "-d", str(dirs[0]), "--pid", str(owner.pid), f"file:{other}")
            assert refused.returncode == 2, refused
            (line,) = refused.stderr.splitlines()
            assert line.startswith(f"sc: error: repository 'made' in {dirs[0]} is being populated with another "
                                   f"recipe (checksummed data.tar.gz md5:{md5[:12]}… tar) than the one given "
                                   f"(file:{other}): choose another name"), line


def test_list_shows_a_failed_population_and_one_in_progress_as_they_are(dirs, tarball, tmp_path):
    # A failed population was not listed (its record, told to its waiters, was there); one in
    # progress showed the bytes received so far as its size, and a path that did not exist yet.
    base = dirs[0]
    missing = tmp_path / "missing.bin"
    before = time.time()
    failed = sc("--use", "-d", str(base), "-n", "broken", f"file:{missing}")
    assert failed.returncode == 1, failed
    why = failed.stderr.removeprefix("sc: error: repository 'broken': ").strip()
    with paused_population(base, tmp_path, "-n", "making", *recipe(tarball)) as populator:
        rows = {row["name"]: row for row in json.loads(sc("list", "--json", "-d", str(base)).stdout)}
        shown = sc("list", "-d", str(base)).stdout
    broken, making = rows["broken"], rows["making"]
    assert broken["state"] == "failed" and broken["error"] == f"repository 'broken': {why}", broken
    assert before <= broken["failed_at"] <= time.time(), broken
    assert (broken["path"], broken["size"], broken["users"], broken["in_use"]) == (None, None, [], False), broken
    assert making["state"] == "populating" and (making["path"], making["size"]) == (None, None), making
    assert (making["users"], making["owners"]) == ([populator.pid], [str(populator.pid)]), making
    assert making["done"] == 0 and making["error"] is None, making
    lines = {line.split()[0]: line for line in shown.splitlines()[1:]}
    assert lines["broken"].split()[1:4] == ["failed", "-", "-"] and why in lines["broken"], shown
    assert lines["making"].split()[1:] == ["populating", "0", "B", "-", "-", str(populator.pid)], shown
    # Once made, it is ready, and no longer failed.
    missing.write_bytes(b"here now")
    with Sleeper() as owner:
        assert sc("--use", "-d", str(base), "-n", "broken", "--pid", str(owner.pid), f"file:{missing}").returncode == 0
        rows = {row["name"]: row for row in json.loads(sc("list", "--json", "-d", str(base)).stdout)}
        assert rows["broken"]["state"] == "ready" and rows["broken"]["error"] is None
        assert set(rows["broken"]) == set(broken) == set(making), "every row has the same fields"
        assert rows["broken"]["path"] == str(user_dir(base) / "broken")


def test_a_populator_of_another_host_is_named_as_such(dirs, tmp_path):
    # A base on a file system that two hosts share: the status record of a population that
    # another host runs named a bare pid, read as this host's process (here, a stopped one).
    base = dirs[0]
    data = tmp_path / "data.bin"
    data.write_bytes(b"data")
    assert sc("--use", "-d", str(base), "-n", "here", "--pid", "1", f"file:{data}").returncode == 0
    populate = control(base) / "populate"
    with Sleeper() as local:
        os.kill(local.pid, signal.SIGSTOP)
        namespace = pid_namespace()
        (populate / "remote.json").write_text(json.dumps({
            "pid": local.pid, "pid_ns": namespace, "owner": f"another-boot:{local.pid}:1:{namespace}:another-host",
            "identity": f"file:{data}", "done": 0, "total": None, "started": time.time()}))
        lock = os.open(populate / "remote.lock", os.O_RDONLY | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            (row,) = [row for row in json.loads(sc("list", "--json", "-d", str(base)).stdout)
                      if row["name"] == "remote"]
            assert row["owners"] == [f"{local.pid}@another-host"] and row["users"] == [local.pid], row
            assert f"{local.pid}@another-host" in sc("list", "-d", str(base)).stdout
            waiter = sc("--use", "-d", str(base), "-n", "remote", "--timeout", "1", f"file:{data}")
            assert waiter.returncode == 1, waiter
            assert f"waiting for process {local.pid}@another-host to populate it" in waiter.stderr, waiter.stderr
            assert "stopped" not in waiter.stderr, waiter.stderr
        finally:
            os.close(lock)


def test_a_name_that_would_steer_the_terminal_is_refused_and_listed_escaped(dirs, tarball):
    for name in ("new\nline", "red\x1b[31m", "bell\x07"):
        refused = sc("--use", "-n", name, "-d", str(dirs[0]), *recipe(tarball))
        assert refused.returncode == 2 and "invalid repository name" in refused.stderr, refused.stderr
        assert refused.stderr.count("\n") == 1 and "\x1b" not in refused.stderr
    # Such a name can still come from elsewhere (another member of a group cache, the engine's
    # API): the listing escapes it, one line per repository.
    assert sc("--use", "-n", "plain", "-d", str(dirs[0]), "--pid", "1", *recipe(tarball)).returncode == 0
    with sharedcache.FsCache(control(dirs[0])).store("red\x1b[31m\nmore", meta="m") as data:
        (data / "f").write_bytes(b"x")
    listing = sc("list", "-d", str(dirs[0]))
    assert listing.returncode == 0, listing.stderr
    assert "\x1b" not in listing.stdout and "red\\x1b[31m\\nmore" in listing.stdout, listing.stdout
    assert len(listing.stdout.splitlines()) == 3, listing.stdout  # the heading and two rows
    rows = json.loads(sc("list", "--json", "-d", str(dirs[0])).stdout)  # JSON escapes them itself
    assert {row["name"] for row in rows} == {"plain", "red\x1b[31m\nmore"}


def test_python_api_takes_one_path_as_the_directories(dirs, tarball):
    with sharedcache.use(*recipe(tarball), name="repo", directories=dirs[0]) as path:
        assert path == user_dir(dirs[0]) / "repo"
        check_tree(path, FILES)


def test_sc_directories_environment(dirs, tarball):
    with Sleeper() as owner:
        env = sc_env(SC_DIRECTORIES=str(dirs[1]))
        result = sc("--use", "-n", "repo", "--pid", str(owner.pid), *recipe(tarball), env=env)
        assert result.stdout.strip() == str(user_dir(dirs[1]) / "repo")


def test_planted_entry_at_link_path_is_refused_and_leaks_no_lease(dirs, tarball):
    user_dir(dirs[0]).mkdir(mode=0o700)
    (user_dir(dirs[0]) / "repo").symlink_to("/etc")
    for _ in range(2):
        result = sc("--use", "-n", "repo", "-d", str(dirs[0]), *recipe(tarball))
        assert result.returncode == 1 and "refusing" in result.stderr
        assert os.readlink(user_dir(dirs[0]) / "repo") == "/etc"
        assert not (control(dirs[0]) / "objects" / "repo").exists(), "the use taken was released"


def test_location_shows_only_a_link_it_checked(dirs, tarball):
    args = ["-n", "repo", "-d", str(dirs[0]), "--keep", *recipe(tarball)]
    link = user_dir(dirs[0]) / "repo"
    assert sc("--use", *args).returncode == 0 and sc("--unuse", *args).returncode == 0
    link.unlink()
    link.symlink_to("/etc/passwd")
    planted = sc("--location", *args)
    assert planted.returncode == 1 and planted.stdout == ""
    assert "refusing" in planted.stderr and len(planted.stderr.splitlines()) == 1
    link.unlink()
    missing = sc("--location", *args)
    assert missing.returncode == 1 and missing.stdout == ""
    assert "link" in missing.stderr and "missing" in missing.stderr and len(missing.stderr.splitlines()) == 1
    assert sc("--use", *args).stdout == f"{link}\n"
    assert sc("--location", *args).stdout == f"{link}\n"


@pytest.mark.parametrize(("part", "damage"), [(part, damage) for part in ("data", "lock")
                                               for damage in ("symlink", "fifo", "directory", "missing")
                                               if (part, damage) != ("data", "directory")])
def test_an_entry_whose_data_or_lock_was_replaced_is_refused_and_gc_deletes_it(dirs, tarball, part, damage):
    args = ["-n", "repo", "-d", str(dirs[0]), "--keep", *recipe(tarball)]
    assert sc("--use", *args).returncode == 0 and sc("--unuse", *args).returncode == 0
    replaced = control(dirs[0]) / "objects" / "repo" / part
    replaced.chmod(0o755)
    os.rename(replaced, replaced.with_name("aside"))
    {"symlink": lambda: replaced.symlink_to("/etc" if part == "data" else "aside"),
     "fifo": lambda: os.mkfifo(replaced), "directory": replaced.mkdir, "missing": lambda: None}[damage]()
    assert sc("list", "-d", str(dirs[0])).returncode == 0
    refused = sc("--use", *args)
    assert refused.returncode == 1 and refused.stdout == ""
    assert "damaged" in refused.stderr and len(refused.stderr.splitlines()) == 1, refused.stderr
    assert sc("gc", "-d", str(dirs[0])).returncode == 0
    assert not (control(dirs[0]) / "objects" / "repo").exists()
    used = sc("--use", *args)
    assert used.returncode == 0, used.stderr
    check_tree(Path(used.stdout.strip()), FILES)


@pytest.mark.parametrize("damage", ["missing", "symlink", "directory", "empty", "zeroed"])
def test_a_repository_that_lost_the_record_of_its_recipe_is_damaged_and_gc_deletes_it(dirs, tarball, damage):
    args = ["-n", "repo", "-d", str(dirs[0]), "--keep", *recipe(tarball)]
    assert sc("--use", *args).returncode == 0 and sc("--unuse", *args).returncode == 0
    meta = control(dirs[0]) / "objects" / "repo" / "meta"
    meta.parent.chmod(0o755)
    meta.unlink()
    {"missing": lambda: None, "symlink": lambda: meta.symlink_to("keep"), "directory": meta.mkdir,
     "empty": meta.touch, "zeroed": lambda: meta.write_bytes(bytes(60))}[damage]()
    for action in ("--use", "--location", "--unuse"):
        refused = sc(action, *args)
        assert refused.returncode == 1 and refused.stdout == "", (action, refused.stderr)
        assert "damaged" in refused.stderr and len(refused.stderr.splitlines()) == 1, refused.stderr
    # Listed as such, with the reason the uses give (it was listed "ready").
    (row,) = json.loads(sc("list", "--json", "-d", str(dirs[0])).stdout)
    assert row["state"] == "damaged" and "record of its recipe (its meta file) is lost" in row["error"], row
    listed = sc("list", "-d", str(dirs[0])).stdout.splitlines()[1].split()
    assert listed[:3] == ["repo", "damaged", "(kept)"], listed
    with Sleeper() as owner:  # in use (a use taken before), it stays; once unused, gc deletes it, kept as it is
        leases = control(dirs[0]) / "objects" / "repo" / "leases"
        os.close(os.open(leases / f"{Owner.of(owner.pid).key}.x", os.O_CREAT | os.O_WRONLY, 0o600))
        assert sc("gc", "-d", str(dirs[0])).returncode == 0
        assert meta.parent.exists()
    assert sc("gc", "-d", str(dirs[0])).returncode == 0
    assert not meta.parent.exists()
    used = sc("--use", *args)
    assert used.returncode == 0, used.stderr
    check_tree(Path(used.stdout.strip()), FILES)


def test_missing_file_source_is_a_clear_error(dirs):
    result = sc("--use", "-n", "repo", "-d", str(dirs[0]), "file:/no/such/file.tar", "tar")
    assert result.returncode == 1
    assert "/no/such/file.tar" in result.stderr and "Traceback" not in result.stderr


def test_single_file_with_hash(dirs, tmp_path):
    payload = os.urandom(300_000)
    src = tmp_path / "blob.bin"
    src.write_bytes(payload)
    digest = hashlib.sha256(payload).hexdigest()
    with Sleeper() as owner:
        result = sc("--use", "-n", "blob", "-d", str(dirs[0]), "--pid", str(owner.pid), f"file:{src}", f"sha256:{digest}")
        assert result.returncode == 0, result.stderr
        assert (Path(result.stdout.strip()) / "blob.bin").read_bytes() == payload


def test_concurrent_use_unuse_never_sees_partial_data(dirs, tarball):
    """Processes loop over use / read / unuse of one repository: the last release deletes it
    while others re-create it; every read must see complete data."""
    worker = textwrap.dedent(f"""
        import subprocess, sys, hashlib, os
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from scutil import SC, check_tree, sample_files
        files = sample_files()
        args = ["-n", "churn", "-d", {str(dirs[0])!r}, "--pid", str(os.getpid()), *{recipe(tarball)!r}]
        for _ in range(6):
            r = subprocess.run([*SC, "--use", *args], capture_output=True, text=True, timeout=60)
            assert r.returncode == 0, r.stderr
            from pathlib import Path
            check_tree(Path(r.stdout.strip()), files)
            r = subprocess.run([*SC, "--unuse", *args], capture_output=True, text=True, timeout=60)
            assert r.returncode == 0, r.stderr
        print("ok")
    """)
    procs = [subprocess.Popen([sys.executable, "-c", worker], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    for status, out, err in finish(procs, timeout=120):
        assert status == 0 and out.strip() == "ok", err
    assert json.loads(sc("list", "--json", "-d", str(dirs[0])).stdout) == []


def test_committed_data_is_read_only_and_deletion_restores_write(dirs, tarball):
    with Sleeper() as owner:
        args = ["-n", "repo", "-d", str(dirs[0]), "--pid", str(owner.pid), *recipe(tarball)]
        path = Path(sc("--use", *args).stdout.strip())
        for item in [path, *path.rglob("*")]:
            mode = item.stat().st_mode & 0o7777
            assert mode == (0o555 if item.is_dir() else 0o444), (item, oct(mode))
        assert sc("--unuse", *args).returncode == 0
        assert not (control(dirs[0]) / "objects" / "repo").exists()
        assert list((control(dirs[0]) / "trash").iterdir()) == []


def test_unpacked_files_are_sealed_by_their_execute_bits_whatever_modes_the_archive_gives(dirs, tmp_path):
    # The unpacker gives files their sealed modes itself, so the commit's walk changes none: the
    # result must be what sealing the archive's modes gives.
    import io
    import tarfile

    modes = {"plain": 0o644, "tool": 0o755, "suid": 0o4755, "none": 0o000, "own-only": 0o700,
             "others-exec": 0o601, "everyone": 0o777}
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, mode in modes.items():
            info = tarfile.TarInfo(f"bin/{name}")
            info.size, info.mode = 1, mode
            archive.addfile(info, io.BytesIO(b"x"))
    source = tmp_path / "modes.tar.gz"
    source.write_bytes(buffer.getvalue())
    with Sleeper() as owner:
        args = ["-n", "modes", "-d", str(dirs[0]), "--pid", str(owner.pid), f"file:{source}",
                f"sha256:{hashlib.sha256(buffer.getvalue()).hexdigest()}", "tar"]
        path = Path(sc("--use", *args).stdout.strip())
        found = {item.name: item.stat().st_mode & 0o7777 for item in (path / "bin").iterdir()}
        assert found == {name: 0o555 if mode & 0o111 else 0o444 for name, mode in modes.items()}
        assert sc("--unuse", *args).returncode == 0


def test_gc_keeps_a_fresh_error_record_without_counting_it_and_cleans_an_old_one(dirs, tarball):
    path, _md5 = tarball
    failed = sc("--use", "-n", "repo", "-d", str(dirs[0]), f"file:{path}", "md5:" + "0" * 32, "tar")
    assert failed.returncode == 1
    record = control(dirs[0]) / "populate" / "repo.error"
    assert record.exists()
    gc = sc("gc", "-d", str(dirs[0]))
    assert gc.returncode == 0 and "populations cleaned" not in gc.stdout, gc.stdout
    assert record.exists()  # it answers the waiters of that population for a while
    stale = json.loads(record.read_text())
    stale["time"] -= 3600
    record.write_text(json.dumps(stale))
    gc = sc("gc", "-d", str(dirs[0]))
    assert gc.returncode == 0 and "populations cleaned: 1" in gc.stdout, gc.stdout
    assert not record.exists()


@pytest.mark.parametrize(("args", "kwargs", "message"), [
    ((["file:/x", "tar"],), {}, "separate arguments"),
    ((("file:/x", "tar"),), {}, "separate arguments"),
    ((None,), {}, "not NoneType"),
    ((b"file:/x",), {}, "not bytes"),
    (("file:/x\0y", "md5:" + "0" * 32), {}, "loader word 'file:/x\\x00y' holds a NUL character"),
    ((), {}, "no loader given"),
    (("file:/x",), {"name": "a/b"}, "invalid repository name"),
    (("file:/x",), {"size": "lots"}, "invalid size: 'lots' (expected bytes"),
    (("file:/x",), {"max_size": -1}, "invalid max_size: -1 is negative"),
    (("file:/x",), {"connections": 0}, "use(connections=...) must be between 1 and 32"),
    (("file:/x",), {"connections": "4"}, "use(connections=...) must be between 1 and 32, not '4'"),
    (("nope:/x",), {}, "unknown loader 'nope'"),
    (("file:/x",), {"keep": "yes"}, "keep must be True or False, not 'yes'"),
    (("file:/x",), {"group": 1.5}, "a group is a name or a gid, not 1.5"),
    (("file:/x",), {"group": -1}, "use(group=...) -1: no gid is negative or over 4294967294"),
    (("file:/x",), {"group": "4294967295"}, "use(group=...) '4294967295': no gid is negative or over 4294967294"),
    (("file:/x",), {"fetch": "x"}, "fetch must be a FetchPolicy, not 'x'"),
    (("file:/x",), {"verbosity": "loud"}, "verbosity must be a whole number, not 'loud'"),
    (("file:/x",), {"directories": 5}, "directories must be paths, not 5"),
    (("file:/x",), {"directories": b"/tmp"}, "directories must be paths, not b'/tmp'"),
    (("file:/x",), {"directories": ["/tmp", 5]}, "a candidate directory must be a path, not 5"),
    (("file:/x",), {"directories": [b"/tmp"]}, "a candidate directory must be a path, not b'/tmp'"),
])
def test_python_api_bad_input_is_a_usage_error_of_one_line(dirs, args, kwargs, message):
    kwargs = {"directories": [str(dirs[0])], **kwargs}
    with pytest.raises(sharedcache.UsageError) as caught:
        with sharedcache.use(*args, **kwargs):
            raise AssertionError("no use may be held")
    assert message in str(caught.value) and "\n" not in str(caught.value)
    assert not (user_dir(dirs[0]) / "repo").exists()


_DIRECTORIES_AT_HOME = r"""
import pathlib, sys
import sharedcache

for directories in ("~/bases", ["~/bases"], pathlib.Path("~/bases"), "/nonexistent:~"):
    with sharedcache.use(*sys.argv[1:], name="r", directories=directories) as path:
        print(path)
try:
    with sharedcache.use(*sys.argv[1:], name="r", directories="~no-such-user-of-sc/bases"):
        pass
except sharedcache.UsageError as e:
    print(e)
"""


def test_a_leading_tilde_in_the_directories_of_use_is_the_home(tmp_path, tarball):
    # No shell expands what a program gives use(): '~/bases' was the relative path
    # '$PWD/~/bases', missing, where SC_DIRECTORIES, a config file and sc's shell make it the home.
    home, elsewhere = tmp_path / "home", tmp_path / "cwd"
    (home / "bases").mkdir(parents=True)
    elsewhere.mkdir()
    done = subprocess.run([sys.executable, "-c", _DIRECTORIES_AT_HOME, *recipe(tarball)], cwd=elsewhere,
                          capture_output=True, text=True, timeout=60, env=sc_env(HOME=str(home)))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [str(user_dir(home / "bases") / "r")] * 3 + [str(user_dir(home) / "r")] + [
        "use(directories=...) names '~no-such-user-of-sc/bases', but there is no user 'no-such-user-of-sc'"]
    assert os.listdir(elsewhere) == []


def test_a_relative_path_in_a_deleted_directory_is_one_line_naming_it(tmp_path, dirs, tarball):
    # A job whose working directory was removed under it: getcwd() fails with a bare
    # "No such file or directory", which named neither the path nor the cause.
    gone = tmp_path / "gone"
    for args, path in ((["-d", d(dirs), "file:data.tar.gz", "tar"], "data.tar.gz"),
                       (["-d", "relative/base", *recipe(tarball)], "relative/base")):
        gone.mkdir()
        done = subprocess.run(["sh", "-c", 'cd "$0" && rmdir "$0" && exec "$@"', str(gone), *SC, "--use",
                               "--pid", str(os.getpid()), *args],
                              capture_output=True, text=True, timeout=60, env=sc_env())
        assert done.returncode == 1 and done.stdout == "", done.stderr
        assert done.stderr == (f"sc: error: cannot resolve the relative path '{path}': the current directory "
                               "no longer exists\n")


def test_each_unusable_candidate_directory_is_named_with_its_reason(tmp_path, tarball):
    # A path that is a file was reported "missing", which sends whoever reads it looking for a
    # directory that is there, as a file.
    afile = tmp_path / "a-file"
    afile.write_text("")
    done = sc("--use", "-d", f"{afile}:{tmp_path / 'absent'}", "--pid", str(os.getpid()), *recipe(tarball))
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.endswith(f"no usable candidate directory: {afile} (not a directory), "
                                f"{tmp_path / 'absent'} (missing)\n"), done.stderr


def test_an_error_about_a_long_url_stays_a_line_that_says_what_and_why(tmp_path):
    # Signed URLs run to kilobytes, and the URL is in the line once or twice: it was printed whole.
    closed = socket.create_server(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    config = tmp_path / "config"
    config.write_text("retries = 0\n")
    url = f"http://127.0.0.1:{port}/data.tar?signature={'s' * 5000}"
    done = sc("--use", "-d", str(tmp_path), "--pid", str(os.getpid()), "-n", "signed", f"http:{url}",
              env=sc_env(SC_CONFIG=str(config)))
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr[:200]
    line = done.stderr.rstrip("\n")
    assert len(line) < 4100, len(line)
    assert line.startswith(f"sc: error: repository 'signed': cannot download http://127.0.0.1:{port}/data.tar?"), line[:200]
    assert re.search(r"Connection refused \([0-9,]+ characters\)$", line), line[-200:]


@pytest.mark.parametrize("stdout", ["full", "closed"])
def test_a_use_whose_path_cannot_be_written_fails_and_is_released(tmp_path, stdout):
    # The path was written at exit, after the use was taken: a full device was reported as
    # "No space left on device", as if the cache's were full, and a closed stdout as success;
    # both left the job a use it was never told of.
    source = tmp_path / "data.bin"
    source.write_bytes(b"data\n" * 100)
    base = tmp_path / "base"
    base.mkdir()
    redirect = ">/dev/full" if stdout == "full" else ">&-"
    why = "No space left on device" if stdout == "full" else "the standard output is closed"
    with Sleeper() as owner:
        result = subprocess.run(["bash", "-c", f'exec "$@" {redirect}', "bash", *SC, "--use", "--pid",
                                 str(owner.pid), "-d", str(base), f"file:{source}"],
                                capture_output=True, text=True, timeout=60, env=sc_env())
        assert (result.returncode, result.stderr) == (1, f"sc: error: cannot write the output: {why}\n")
        listed = json.loads(sc("list", "--json", "-d", str(base)).stdout)
        assert [pid for row in listed for pid in row["users"]] == []


def test_a_directory_named_twice_is_one_candidate(tmp_path):
    # Named again (with a trailing slash, or through a symlink), it was two candidates: list
    # showed each repository twice, and gc collected the cache twice.
    source = tmp_path / "data.bin"
    source.write_bytes(b"data\n")
    base = tmp_path / "base"
    base.mkdir()
    (tmp_path / "link").symlink_to(base)
    named = f"{base}:{base}/:{tmp_path / 'link'}"
    with Sleeper() as owner:
        assert sc("--use", "--pid", str(owner.pid), "-d", named, f"file:{source}").returncode == 0
        listed = json.loads(sc("list", "--json", "-d", named).stdout)
        assert len(listed) == 1, listed
        collected = sc("gc", "-d", named)
        assert collected.stdout == f"{base}: nothing to do\n", collected.stdout


def test_every_output_that_cannot_be_written_is_said_so(tmp_path):
    # Only --use said "cannot write the output": --location, list, gc, config and --version
    # said the system's error alone ("No space left on device"), which read as the cache's.
    source = tmp_path / "data.bin"
    source.write_bytes(b"data\n")
    base = tmp_path / "base"
    base.mkdir()
    with Sleeper() as owner:
        assert sc("--use", "--pid", str(owner.pid), "-d", str(base), f"file:{source}").returncode == 0
        for command in (["--location", "-d", str(base), f"file:{source}"], ["list", "-d", str(base)],
                        ["list", "--json", "-d", str(base)], ["gc", "-d", str(base)], ["config"],
                        ["--version"], ["--help"]):
            result = subprocess.run(["bash", "-c", 'exec "$@" >/dev/full', "bash", *SC, *command],
                                    capture_output=True, text=True, timeout=60, env=sc_env())
            assert (result.returncode, result.stderr) == (
                1, "sc: error: cannot write the output: No space left on device\n"), command


@pytest.mark.parametrize("unbuffered", ["", "1"], ids=["buffered", "PYTHONUNBUFFERED"])
def test_an_error_line_that_cannot_be_written_keeps_the_exit_status(tmp_path, unbuffered):
    # A standard error that cannot take the error line (a full disk under 2>>job.log, a reader
    # gone): the write's error escaped sc, whose exit status was then 1 whatever the error was;
    # so it stayed for sc run's "cannot run" (127 not found, 126 not runnable).
    source = tmp_path / "data.bin"
    source.write_bytes(b"data\n")
    not_runnable = tmp_path / "not-runnable"
    not_runnable.write_text("#!/bin/sh\n")
    run = ["run", "-d", str(tmp_path), "-n", "data", f"file:{source}", "--"]
    for command, status in ((["--use", "-d", str(tmp_path), "-n", "..", f"file:{source}"], 2),
                            ([*run, str(tmp_path / "no-such-command")], 127), ([*run, str(not_runnable)], 126)):
        full = subprocess.run(["bash", "-c", 'exec "$@" 2>/dev/full', "bash", *SC, *command],
                              capture_output=True, text=True, timeout=60, env=sc_env(PYTHONUNBUFFERED=unbuffered))
        read_end, write_end = os.pipe()
        os.close(read_end)
        try:
            gone = subprocess.run([*SC, *command], stdout=subprocess.PIPE, stderr=write_end, text=True, timeout=60,
                                  env=sc_env(PYTHONUNBUFFERED=unbuffered))
        finally:
            os.close(write_end)
        assert [(result.returncode, result.stdout) for result in (full, gone)] == [(status, ""), (status, "")], command


def test_location_and_unuse_under_a_name_refuse_another_recipes_repository(dirs, tarball, tmp_path):
    # --use refuses a name that another recipe made; --location printed that recipe's path (its
    # data, not the one asked for) and --unuse released its use, deleting it under its job.
    other = tmp_path / "other.bin"
    other.write_bytes(b"not the tarball")
    with Sleeper() as owner:
        base = ["-n", "shared-name", "-d", d(dirs)]
        assert sc("--use", *base, "--pid", str(owner.pid), *recipe(tarball)).returncode == 0
        for command in (["--location", *base, f"file:{other}"],
                        ["--unuse", *base, "--pid", str(owner.pid), f"file:{other}"]):
            result = sc(*command)
            assert result.returncode == 2 and result.stdout == "", (command, result)
            lines = result.stderr.strip().splitlines()
            assert len(lines) == 1 and "holds another recipe" in lines[0], result.stderr
        listed = json.loads(sc("list", "--json", "-d", d(dirs)).stdout)
        assert [(row["name"], row["users"]) for row in listed] == [("shared-name", [owner.pid])]
        located = sc("--location", *base, *recipe(tarball))
        assert located.returncode == 0 and located.stdout.strip().endswith("/shared-name")
        assert sc("--unuse", *base, "--pid", str(owner.pid), *recipe(tarball)).returncode == 0


def test_unuse_releases_the_use_in_the_candidate_that_holds_it(dirs, tarball):
    # The same repository is in both candidates (made by jobs whose candidates came in another
    # order): --unuse looked only in the first one holding it, and failed, saying this job held
    # no use there, while its use in the second lived on.
    first, second = dirs
    with Sleeper() as other_job, Sleeper() as job:
        assert sc("--use", "-d", str(first), "--pid", str(other_job.pid), *recipe(tarball)).returncode == 0
        assert sc("--use", "-d", str(second), "--pid", str(job.pid), *recipe(tarball)).returncode == 0
        released = sc("--unuse", "-d", d(dirs), "--pid", str(job.pid), *recipe(tarball))
        assert released.returncode == 0, released.stderr
        users = {row["base"]: row["users"] for row in json.loads(sc("list", "--json", "-d", d(dirs)).stdout)}
        assert users == {str(first): [other_job.pid]}


def test_list_gives_no_path_for_a_repository_that_gc_adopted_until_a_use_links_it(tmp_path):
    # A repository committed whose row and link were lost (its use killed between the steps of
    # its commit: gc gives it its row back, not its link) was listed with the path of a link
    # that did not exist.
    source = tmp_path / "f.txt"
    source.write_text("hi\n")
    base = tmp_path / "base"
    base.mkdir()
    common = ["-d", str(base), "-n", "r", f"file:{source}"]
    assert sc("--keep", "run", *common, "--", "true").returncode == 0
    (user_dir(base) / "r").unlink()
    for index in control(base).glob("index.sqlite*"):
        index.unlink()
    assert sc("gc", "-d", str(base)).returncode == 0

    def listed() -> dict[str, object]:
        done = sc("list", "--json", "-d", str(base))
        assert done.returncode == 0, done.stderr
        [row] = json.loads(done.stdout)
        return row  # type: ignore[no-any-return]

    assert (listed()["state"], listed()["path"]) == ("ready", None)
    assert sc("--keep", "run", *common, "--", "true").returncode == 0
    assert listed()["path"] == str(user_dir(base) / "r")
