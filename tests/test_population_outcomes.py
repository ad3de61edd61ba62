"""What the waiters of a population are told, and what a population leaves held when it ends."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from scutil import (SC, SRC, Sleeper, control, finish, interpreter_for, mounted_tmpfs, pause_at, sc, sc_env, sc_start,
                    started_paused, tarball_bytes, wait_for)


def populator_and_waiter(origin, base, tmp_path, populator_env: dict[str, str],  # type: ignore[no-untyped-def]
                         waiter_env: dict[str, str] | None = None, **populator_options):
    """A population of a 300 KB download, by a process with ``populator_env`` and
    ``populator_options`` (Popen's), and a use with neither (with ``waiter_env``) that waits for
    it; each one's exit status, output and errors, once the waiter has checked what it got."""
    payload = os.urandom(300_000)
    url = origin.add("/blob.bin", payload)
    origin.rate = 300_000
    args = ["--use", "-d", str(base), "-n", "blob", f"http:{url}", "sha256:" + hashlib.sha256(payload).hexdigest()]
    site = tmp_path / "site"
    site.mkdir()
    # The populator pauses as it makes its work directory, before it connects: its waiter is then waiting.
    (site / "sitecustomize.py").write_text(pause_at('event == "os.mkdir" and str(args[0]).endswith(".work")'))
    paused, go = tmp_path / "paused", tmp_path / "go"
    populator = sc_start(*args, env=sc_env(PYTHONPATH=os.pathsep.join([str(site), SRC]), SC_TEST_PAUSED=str(paused),
                                           SC_TEST_GO=str(go), **populator_env), **populator_options)
    try:
        wait_for(paused.exists, what="the populator")
        waiter = sc_start(*args, env=sc_env(**(waiter_env or {})))
        time.sleep(1.0)  # the waiter waits for the populator
        go.touch()
        populated, waited = finish([populator, waiter], timeout=60)
    finally:
        finish([populator])
    status, out, err = waited
    assert status == 0, err
    assert (Path(out.strip()) / "blob.bin").read_bytes() == payload
    return populated, waited


def test_a_populators_own_settings_are_not_its_waiters_failure(origin, base, tmp_path):
    """A use whose proxy variable is malformed fails with its own usage error before it takes the
    population: it leaves no error record that a use with fine settings would be told, and that
    one populates.  (It failed as the populator, its waiter not told that error by the rule the
    next test checks with a limit of the populator's own, which a population still meets.)"""
    payload = os.urandom(300_000)
    url = origin.add("/blob.bin", payload)
    args = ["--use", "-d", str(base), "-n", "blob", f"http:{url}", "sha256:" + hashlib.sha256(payload).hexdigest()]
    ((bad, _, bad_err),) = finish([sc_start(*args, env=sc_env(http_proxy="http://[bad"))], timeout=60)
    assert bad == 2 and "http_proxy" in bad_err, bad_err
    assert not list(base.iterdir()), "nothing was made in the cache"
    ((status, out, err),) = finish([sc_start(*args)], timeout=60)
    assert status == 0, err
    assert (Path(out.strip()) / "blob.bin").read_bytes() == payload
    assert origin.stats("/blob.bin").gets == 1


def test_a_populators_own_credentials_are_not_its_waiters_failure(origin, base, tmp_path):
    """A populator whose .netrc cannot be read (a NUL byte in it) fails with that error; the
    process waiting for it, whose own .netrc is fine, is not told it (it was, as the recipe's
    failure: "cannot read .../netrc"): it populates."""
    netrc = tmp_path / "netrc"
    netrc.write_bytes(b"machine elsewhere login a password \0\n")
    (bad, _, bad_err), _ = populator_and_waiter(origin, base, tmp_path, {"NETRC": str(netrc)})
    assert bad == 1 and bad_err.endswith(f"cannot read {netrc}: it holds a NUL byte (line 1)\n"), bad_err
    assert origin.stats("/blob.bin").gets == 1


@pytest.mark.parametrize("status", [401, 403])
def test_a_refusal_of_the_populators_credentials_is_not_its_waiters_failure(origin, base, tmp_path, status):
    """The origin refuses the request of a populator that has no login for it (an expired token,
    on a grid node where each job has its own); the process waiting for it, whose .netrc has one,
    is not told that refusal (it was: "HTTP 401 Unauthorized ... (no credentials were sent)",
    false of it): it populates, sending its own login."""
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login waiter password its-own\n")
    netrc.chmod(0o600)
    origin.fault("/blob.bin", status=status)  # the populator's request
    (refused, _, refused_err), _ = populator_and_waiter(origin, base, tmp_path, {"NETRC": "/dev/null"},
                                                        {"NETRC": str(netrc)})
    assert refused == 1 and f"HTTP {status} " in refused_err and "(no credentials were sent)" in refused_err, \
        refused_err
    stats = origin.stats("/blob.bin")
    assert stats.statuses == [status, 200]
    assert stats.authorizations == ["Basic " + base64.b64encode(b"waiter:its-own").decode()]


@pytest.mark.skipif(os.getuid() != 0 or shutil.which("setpriv") is None,
                    reason="needs root and setpriv, to run sc as a uid with and without a group")
def test_a_file_refused_to_the_populators_groups_is_not_its_waiters_failure(reachable_tmp):
    """A job without the group that may read a ``file:`` source populates, and is refused the
    file; a job of the same user that has the group waits for it.  The waiter was handed the
    populator's "Permission denied" (and read the file at its next try): it reads it at once."""
    import grp
    import pwd

    taken = {entry.pw_uid for entry in pwd.getpwall()} | {entry.gr_gid for entry in grp.getgrall()}
    free = (number for number in range(54321, 64000) if number not in taken)
    uid, reader = next(free), next(free)  # (a user's, and a group that is none of its own)
    python = interpreter_for(uid, uid)
    payload = os.urandom(10_000)
    data = reachable_tmp / "data.bin"
    data.write_bytes(payload)
    os.chown(data, 0, reader)
    data.chmod(0o640)
    for mine in ("base", "flags"):  # (the jobs' cache, and the files that pause them)
        (reachable_tmp / mine).mkdir()
        os.chown(reachable_tmp / mine, uid, uid)
    job = ["setpriv", f"--reuid={uid}", f"--regid={uid}"]
    with Sleeper() as owner:
        use = ["--use", "-d", str(reachable_tmp / "base"), "--pid", str(owner.pid), "-n", "blob", f"file:{data}",
               "sha256:" + hashlib.sha256(payload).hexdigest()]
        # The populator pauses as it makes its work directory, before it opens the file, until
        # the waiter waits for it.
        populator, populating, populate = started_paused(
            reachable_tmp / "flags", "populator", 'event == "os.mkdir" and str(args[0]).endswith(".work")', *use,
            prefix=[*job, "--clear-groups"], python=python)
        waiter = None
        try:
            wait_for(populating.exists, what="the populator")
            waiter, waiting, wait = started_paused(reachable_tmp / "flags", "waiter", WAITER_PAUSES["waiting"], *use,
                                                   prefix=[*job, f"--groups={reader}"], python=python)
            wait_for(waiting.exists, what="the waiter")
            populate.touch()
            ((status, _, err),) = finish([populator], timeout=60)
            assert status == 1 and err.endswith(f": cannot read {data}: Permission denied\n"), err
            wait.touch()
            ((status, out, err),) = finish([waiter], timeout=60)
        finally:
            finish([populator, *([waiter] if waiter else [])], timeout=0)
    assert status == 0, err
    assert (Path(out.strip()) / "data.bin").read_bytes() == payload


@pytest.mark.parametrize("down_first", [False, True], ids=["refusing_first", "down_first"])
def test_a_mirror_refusing_everyone_beside_one_down_is_one_failure_for_every_waiter(origin, base, tmp_path,
                                                                                    down_first):
    """One mirror refuses everyone (403) and the other is down: no waiter's credentials could
    change that, so every waiter is told the populator's failure once its retries are over (each
    populated for itself, one after another, after the same retries of the mirror that is down:
    jobs with a --timeout failed), in either order of the mirrors (with the refusal last, the
    failure of all was still taken for a refusal)."""
    payload = os.urandom(1000)
    origin.add("/blob.bin", payload)
    origin.fault("/blob.bin", status=403, times=100)
    down = socket.create_server(("127.0.0.1", 0))
    down_port = down.getsockname()[1]
    down.close()
    mirrors = [f"http:{origin.url('/blob.bin')}", f"http:http://127.0.0.1:{down_port}/blob.bin"]
    if down_first:
        mirrors.reverse()
    args = ["--use", "-v", "-d", str(base), "-n", "blob", *mirrors, "sha256:" + hashlib.sha256(payload).hexdigest()]
    # The populator pauses as it makes its work directory, before it connects, until every waiter waits.
    populator, paused, go = started_paused(tmp_path, "populator", 'event == "os.mkdir" and str(args[0]).endswith(".work")',
                                           *args)
    waiters, said = [], []
    try:
        wait_for(paused.exists, what="the populator")
        for number in range(3):
            said.append(tmp_path / f"waiter{number}.err")
            with said[-1].open("w") as stderr:
                waiters.append(subprocess.Popen([*SC, *args], stdout=subprocess.PIPE, stderr=stderr, text=True,
                                                env=sc_env()))
        wait_for(lambda: all("sc: waiting 0 s for process" in err.read_text() for err in said), what="the waiters")
        go.touch()
        (populated, _, populated_err), *waited = finish([populator, *waiters], timeout=90)
    finally:
        finish([populator, *waiters])
    assert populated == 1 and "every source failed" in populated_err and "HTTP 403 " in populated_err, populated_err
    failure = populated_err.splitlines()[-1]
    for (status, _, _), err in zip(waited, said, strict=True):
        assert status == 1 and err.read_text().splitlines()[-1] == failure, err.read_text()
    assert origin.stats("/blob.bin").gets == 1


def test_a_populators_file_size_limit_is_not_its_waiters_failure(origin, base, tmp_path):
    """A populator that may write smaller files than the data's (``ulimit -f``) fails with that
    limit; the process waiting for it, which has no such limit, is not told that failure (it was:
    "File too large", as the repository's): it populates."""
    hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
    (limited, _, limited_err), _ = populator_and_waiter(
        origin, base, tmp_path, {}, preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, hard)))
    assert limited == 1 and limited_err.endswith(
        "file too large: this process may write files of at most 100000 bytes (ulimit -f); raise the limit\n"), \
        limited_err


def test_a_use_that_asked_before_a_population_failed_is_told_its_failure_whether_or_not_it_waited(
        origin, base, tmp_path):
    """A use that asked while a population was under way is told its failure, rather than making
    it again (a 404, a checksum mismatch), also when it comes to the population lock just after
    the failure released it, without having to wait for it (it downloaded again); a use that
    asks after the failure tries afresh."""
    args = ["--use", "-d", str(base), "-n", "gone", f"http:{origin.url('/gone.tgz')}", "tar"]
    site = tmp_path / "site"
    site.mkdir()
    # The first use pauses as it opens the population lock, having found no repository.
    (site / "sitecustomize.py").write_text(pause_at('event == "open" and str(args[0]).endswith("/gone.lock")'))
    paused, go = tmp_path / "paused", tmp_path / "go"
    early = sc_start(*args, env=sc_env(PYTHONPATH=os.pathsep.join([str(site), SRC]), SC_TEST_PAUSED=str(paused),
                                       SC_TEST_GO=str(go)))
    try:
        wait_for(paused.exists, what="the first use")
        ((status, _, err),) = finish([sc_start(*args)], timeout=60)  # a population that fails meanwhile
        assert status == 1 and "404" in err, err
        go.touch()
        ((early_status, _, early_err),) = finish([early], timeout=60)
    finally:
        finish([early])
    assert (early_status, early_err) == (status, err)
    assert origin.stats("/gone.tgz").gets == 1, "the use that asked before the failure downloaded again"
    ((later, _, later_err),) = finish([sc_start(*args)], timeout=60)
    assert later == 1 and later_err == err
    assert origin.stats("/gone.tgz").gets == 2, "a use that asks after the failure tries afresh"


def test_a_populator_killed_as_it_discards_a_failed_population_s_work_has_recorded_its_failure(
        origin, base, tmp_path):
    """The protocol's order on failure: the error record, then the work directory's discard.  In
    the other order, a populator killed between them left its waiters no record: they downloaded
    again what had just failed."""
    payload = os.urandom(100_000)
    url = origin.add("/bad.bin", payload)
    args = ["--use", "-d", str(base), "-n", "bad", f"http:{url}", "sha256:" + "0" * 64]
    site = tmp_path / "site"
    site.mkdir()
    # The populator pauses as it makes its work directory (its waiter then asks), then as it
    # discards it, having failed.
    (site / "sitecustomize.py").write_text(pause_at('(event == "os.mkdir" and str(args[0]).endswith(".work")) or '
                                                    '(event == "os.rename" and str(args[0]).endswith("bad.work"))', 2))
    paused, go = tmp_path / "paused", tmp_path / "go"
    populator = sc_start(*args, env=sc_env(PYTHONPATH=os.pathsep.join([str(site), SRC]), SC_TEST_PAUSED=str(paused),
                                           SC_TEST_GO=str(go)))
    try:
        wait_for(paused.exists, what="the populator")
        waiter = sc_start(*args)  # it asks while the population is under way: it waits
        time.sleep(1.0)
        paused.unlink()
        go.touch()
        wait_for(paused.exists, what="the populator's discard of its work")
        populator.kill()
        ((status, _, err),) = finish([waiter], timeout=60)
    finally:
        finish([populator])
    assert status == 1 and "sha256 mismatch" in err, err
    assert origin.stats("/bad.bin").gets == 1, "the waiter downloaded again what had just failed"


def test_a_waiter_is_told_a_population_s_internal_error_rather_than_populating_again(base, tmp_path):
    """A fault of sc's own that ends a population (a RecursionError, once: a chain of 1,000
    links in an archive) is recorded for its waiters as the recipe's failures are, and its work
    directory discarded: the waiter that asked meanwhile is told it, in one line, instead of
    taking over to unpack the same data to the same end (it did, finding no record, the work
    directory left behind)."""
    archive = tmp_path / "data.tar.gz"
    archive.write_bytes(tarball_bytes({"f": b"x\n"}))
    args = ["--use", "-d", str(base), "-n", "faulty", f"file:{archive}", "tar"]
    site = tmp_path / "site"
    site.mkdir()
    # The populator pauses as it makes its work directory (its waiter then waits), then meets a
    # fault as it opens the archive.
    (site / "sitecustomize.py").write_text(pause_at('event == "os.mkdir" and str(args[0]).endswith(".work")') + f"""
def _fault(event, args):
    if event == "open" and str(args[0]) == {str(archive)!r}:
        raise RecursionError("maximum recursion depth exceeded")
sys.addaudithook(_fault)
""")
    paused, go = tmp_path / "paused", tmp_path / "go"
    populator = sc_start(*args, env=sc_env(PYTHONPATH=os.pathsep.join([str(site), SRC]), SC_TEST_PAUSED=str(paused),
                                           SC_TEST_GO=str(go)))
    told = tmp_path / "waiter.err"
    try:
        wait_for(paused.exists, what="the populator")
        with told.open("w") as errors:
            waiter = subprocess.Popen([*SC, "-v", *args], stdout=subprocess.PIPE, stderr=errors, text=True,
                                      env=sc_env())
        try:
            wait_for(lambda: "waiting 0 s for process" in told.read_text(), what="the waiter to wait")
            go.touch()
            (status, _, err), (waited, out, _) = finish([populator, waiter], timeout=60)
        finally:
            finish([waiter])
    finally:
        finish([populator])
    assert status == 1 and err == ("sc: internal error (RecursionError: maximum recursion depth exceeded); "
                                   "rerun with -v for details\n"), err
    said = told.read_text().splitlines()[-1]
    assert (waited, out) == (1, ""), said
    assert said == ("sc: error: repository 'faulty': internal error of its population "
                    "(RecursionError: maximum recursion depth exceeded)"), said
    assert not any(base.rglob("faulty.work")), "the work directory was left behind"


def test_data_past_the_populators_size_is_not_past_a_waiters_larger_one(origin, base):
    """The populator's --size is its own: a waiter that asks for more (or sets none) populates
    for itself; one that asks for no more gets the populator's error."""
    files = {f"f{i}": os.urandom(100_000) for i in range(6)}
    payload = tarball_bytes(files, compression="")
    url = origin.add("/data.tar", payload)
    origin.rate = 300_000
    args = ["--use", "-d", str(base), "-n", "data", f"http:{url}", "sha256:" + hashlib.sha256(payload).hexdigest(), "tar"]
    status = control(base) / "populate" / "data.json"
    populator = sc_start(*args, "--size", "250KB")
    wait_for(status.exists, what="the population")
    (first, _, first_err), (same, _, same_err) = finish([populator, sc_start(*args, "--size", "200KB")], timeout=60)
    assert first == 1 and "limit" in first_err, first_err
    assert same == 1 and same_err == first_err, same_err
    assert origin.stats("/data.tar").gets == 1
    populator = sc_start(*args, "--size", "250KB")
    wait_for(status.exists, what="the population")
    (again, _, _), (large, out, large_err) = finish([populator, sc_start(*args, "--size", "10MB")], timeout=60)
    assert again == 1
    assert large == 0, large_err
    assert all((Path(out.strip()) / name).read_bytes() == content for name, content in files.items())


# linecache is imported first: Python 3.12's warning that a fork with threads running may
# deadlock is given while its fork still holds the import lock, and formatting it imports
# linecache, which the population's thread may be importing at that moment (with urllib3), so
# the program deadlocked about once in ten runs on 3.12.1 (3.13 gives the warning after the lock
# is released).  The locks of the population are what this test is about.
_FORKS_DURING_ITS_POPULATION = """
import linecache, os, sys, threading, time
import sharedcache
status, words = sys.argv[1], sys.argv[2:]
def fork():
    while not os.path.exists(status):
        time.sleep(0.01)
    if os.fork() == 0:  # a worker that another thread forks, and that lives on
        time.sleep(30)
        os._exit(0)
threading.Thread(target=fork).start()
with sharedcache.use(*words, name="blob", directories=[os.environ["BASE"]]) as path:
    print("ready", flush=True)
    sys.stdin.readline()
"""


def test_a_child_forked_during_a_population_does_not_hold_its_locks(origin, base):
    """A program that populates in one thread while another forks a long-lived child: once the
    population is committed, the program and the processes waiting for it get the data at once
    (the child's copies of the population lock and of the new entry's lock hold nothing)."""
    payload = os.urandom(600_000)
    url = origin.add("/blob.bin", payload)
    origin.rate = 600_000
    words = [f"http:{url}", "sha256:" + hashlib.sha256(payload).hexdigest()]
    program = subprocess.Popen(
        [sys.executable, "-c", _FORKS_DURING_ITS_POPULATION, str(control(base) / "populate" / "blob.json"), *words],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=sc_env(PYTHONPATH=SRC, BASE=str(base)),
        start_new_session=True)
    try:
        wait_for((control(base) / "populate" / "blob.json").exists, what="the population")
        waiter = sc_start("--use", "-d", str(base), "-n", "blob", *words, "--timeout", "15")
        ((status, out, err),) = finish([waiter], timeout=60)
        assert status == 0, err  # not timed out waiting for the forked child (30 s)
        assert (Path(out.strip()) / "blob.bin").read_bytes() == payload
        assert program.stdout is not None and program.stdout.readline() == "ready\n"
    finally:
        program.kill()
        program.wait(10)
        try:
            os.killpg(program.pid, 9)  # the forked child, in the program's own process group
        except ProcessLookupError:
            pass


# (linecache first: see _FORKS_DURING_ITS_POPULATION.)
_FORKS_A_WORKER_DURING_ITS_POPULATION = """
import linecache, multiprocessing, os, sys, threading, time
import sharedcache
place, words = sys.argv[1], sys.argv[2:]
def populate():
    with sharedcache.use(*words, name="blob", directories=[os.environ["BASE"]]):
        time.sleep(60)
threading.Thread(target=populate, daemon=True).start()
while not (os.path.isdir(place) and os.listdir(place)):  # its stage filling, under the population lock
    time.sleep(0.01)
worker = multiprocessing.get_context("fork").Process(target=time.sleep, args=(60,))  # never uses the cache
worker.start()
print(worker.pid, flush=True)
time.sleep(60)
"""


@contextmanager
def killed_while_its_child_lives(origin, base, program_text: str):  # type: ignore[no-untyped-def]
    """A program that populates a 900 KB download in a thread (``program_text``) while its main
    thread forks a child, then prints the child's pid: it is SIGKILLed, the child lives on with
    copies of its descriptors.  Yields the recipe's words, the program, the child's pid and the
    payload; the child is killed on exit."""
    payload = os.urandom(900_000)
    url = origin.add("/blob.bin", payload)
    origin.rate = 300_000
    words = [f"http:{url}", "sha256:" + hashlib.sha256(payload).hexdigest()]
    program = subprocess.Popen(
        [sys.executable, "-c", program_text, str(control(base) / "stage"), *words],
        stdout=subprocess.PIPE, text=True, env=sc_env(PYTHONPATH=SRC, BASE=str(base)), start_new_session=True)
    child = None
    try:
        assert program.stdout is not None
        child = int(program.stdout.readline())
        program.kill()
        program.wait(10)
        yield words, program, child, payload
    finally:
        _end(program, child)


def _end(program: subprocess.Popen[str] | None, child: int | None) -> None:
    """Kill ``program`` if it runs, and its ``child`` (a pid) if any."""
    if program is not None and program.poll() is None:
        program.kill()
        program.wait(10)
    if child is not None:
        try:
            os.kill(child, 9)
        except ProcessLookupError:
            pass


def test_a_worker_forked_by_another_thread_of_a_killed_populator_holds_none_of_its_locks(origin, base):
    """A program populates in one thread while its main thread forks a worker (multiprocessing's
    fork), and is killed: the next use takes over at once, although the worker lives on with
    copies of every descriptor the population had open (the population's lock, its stage's)."""
    with killed_while_its_child_lives(origin, base, _FORKS_A_WORKER_DURING_ITS_POPULATION) as (
            words, _, worker, payload):
        waiter = sc_start("--use", "-d", str(base), "-n", "blob", *words, "--timeout", "20")
        ((code, out, err),) = finish([waiter], timeout=60)
        assert os.path.exists(f"/proc/{worker}")  # (it lived on, with its copies)
        assert code == 0, err  # not timed out waiting for the dead populator's worker (60 s)
        assert (Path(out.strip()) / "blob.bin").read_bytes() == payload
        assert os.listdir(control(base) / "stage") == []  # the dead population's stage was swept


# A child forked by the C library's fork(), which runs none of Python's fork hooks, keeps every
# copy of its parent's descriptors (see sharedcache.engine.locks).
_FORKS_IN_C_DURING_ITS_POPULATION = _FORKS_A_WORKER_DURING_ITS_POPULATION.replace(
    """worker = multiprocessing.get_context("fork").Process(target=time.sleep, args=(60,))  # never uses the cache
worker.start()
print(worker.pid, flush=True)""",
    """import ctypes
pid = ctypes.PyDLL(None).fork()  # (PyDLL: called holding the interpreter's lock, which the child keeps)
if pid == 0:
    time.sleep(60)  # with its copies of every descriptor, the population lock's among them
    os._exit(0)
print(pid, flush=True)""")


def test_a_waiter_for_a_populator_that_has_ended_says_so_and_who_may_hold_its_lock(origin, base):
    """Only a child that holds a copy of the lock can keep a population's lock once its populator
    has ended: the waiter's line said "a longer --timeout (or none) waits for it to finish", of a
    process that had ended."""
    assert "ctypes" in _FORKS_IN_C_DURING_ITS_POPULATION
    with killed_while_its_child_lives(origin, base, _FORKS_IN_C_DURING_ITS_POPULATION) as (words, program, _, _):
        waiter = sc_start("--use", "-d", str(base), "-n", "blob", *words, "--timeout", "2")
        ((code, _, err),) = finish([waiter], timeout=60)
        assert code == 1 and err.count("\n") == 1, err
        assert f"process {program.pid}" in err and "has ended" in err, err
        assert f"(fuser {control(base) / 'populate' / 'blob.lock'} names it)" in err, err
        assert "a longer timeout" not in err, err


# A thread waits for another process's population while the main thread forks a worker; the
# population is then this program's to take over.
_FORKS_A_WORKER_AS_A_THREAD_WAITS = _FORKS_A_WORKER_DURING_ITS_POPULATION.replace(
    """while not (os.path.isdir(place) and os.listdir(place)):  # its stage filling, under the population lock
    time.sleep(0.01)""",
    """while not os.path.exists(place):  # the waiters' file: the thread waits for another's population
    time.sleep(0.01)
time.sleep(0.2)  # (past its opening of the population lock's file)""")


def test_a_worker_forked_as_a_thread_waits_for_a_lock_holds_none_of_it_once_taken(origin, base):
    """The lock file a thread waits on is open, not locked: a worker forked then kept its copy,
    which held the lock once the thread took it (here, taking over a population whose process
    was killed), and held it after the program was killed too: the next use waited for it."""
    assert "the waiters' file" in _FORKS_A_WORKER_AS_A_THREAD_WAITS
    payload = os.urandom(900_000)
    url = origin.add("/blob.bin", payload)
    origin.rate = 300_000
    words = [f"http:{url}", "sha256:" + hashlib.sha256(payload).hexdigest()]
    populate = control(base) / "populate"
    first = sc_start("--use", "-d", str(base), "-n", "blob", *words)
    program = worker = None
    try:
        wait_for((populate / "blob.json").exists, what="the first population")
        program = subprocess.Popen(
            [sys.executable, "-c", _FORKS_A_WORKER_AS_A_THREAD_WAITS, str(populate / "blob.waiting"), *words],
            stdout=subprocess.PIPE, text=True, env=sc_env(PYTHONPATH=SRC, BASE=str(base)), start_new_session=True)
        assert program.stdout is not None
        worker = int(program.stdout.readline())
        first.kill()
        first.wait(10)

        def taken_over() -> bool:
            try:
                return json.loads((populate / "blob.json").read_text()).get("pid") == program.pid
            except (OSError, ValueError):
                return False  # (none, or being written)

        wait_for(taken_over, what="the program's population")
        program.kill()
        program.wait(10)
        waiter = sc_start("--use", "-d", str(base), "-n", "blob", *words, "--timeout", "20")
        ((code, out, err),) = finish([waiter], timeout=60)
        assert os.path.exists(f"/proc/{worker}")  # (it lived on, with its copies)
        assert code == 0, err  # not timed out waiting for the killed program's worker
        assert (Path(out.strip()) / "blob.bin").read_bytes() == payload
    finally:
        finish([first], timeout=0)
        _end(program, worker)


#: Where a waiter is stopped: as it starts to wait for the population lock (it reads the
#: population's status, to say whom it waits for), or as soon as it has found the population
#: under way, among its candidate bases, before it comes to that lock.
WAITER_PAUSES = {
    "waiting": 'event == "open" and str(args[0]).endswith("/blob.json")',
    "found": 'event == "import" and args[0] == "sharedcache.repository.population"',
}


def waiter_past_a_finished_population(origin, base, tmp_path, pause="waiting"):  # type: ignore[no-untyped-def]
    """A job (``sc run ... -- true``) that populates a repository, and one that asks for it
    while that population is under way; the second is stopped (at ``WAITER_PAUSES[pause]``)
    until the first has committed, run its command and released its use, all before the
    waiter saw the population lock free.  Return the waiter (stopped), the file that lets it go
    on, and the recipe's arguments."""
    payload = os.urandom(300_000)
    url = origin.add("/blob.bin", payload)
    (tmp_path / "expected").write_bytes(payload)
    recipe = ["-d", str(base), "-n", "blob", f"http:{url}", "sha256:" + hashlib.sha256(payload).hexdigest()]
    # The populator pauses as it makes its work directory (its status record is written): the
    # waiter then comes to the population lock while it is held.
    populator, populating, populate = started_paused(
        tmp_path, "populator", 'event == "os.mkdir" and str(args[0]).endswith(".work")', "run", *recipe, "--", "true")
    try:
        wait_for(populating.exists, what="the populator")
        waiter, waiting, wait = started_paused(
            tmp_path, "waiter", WAITER_PAUSES[pause], "run", *recipe, "--", "sh", "-c", 'cmp -- "$SC_PATH/blob.bin" "$0"', str(tmp_path / "expected"))
        try:
            wait_for(waiting.exists, what="the waiter")
            populate.touch()
            ((status, _, err),) = finish([populator], timeout=60)
            assert status == 0, err
        except BaseException:
            finish([waiter], timeout=0)
            raise
    finally:
        finish([populator], timeout=0)
    return waiter, wait, recipe


def let_go_without_download(origin, waiter: subprocess.Popen[str], wait: Path) -> None:  # type: ignore[no-untyped-def]
    """Let the ``waiter`` of :func:`waiter_past_a_finished_population` go on (``wait``), and check
    that it got the data of the population it waited for, not downloaded again."""
    try:
        wait.touch()
        ((status, _, err),) = finish([waiter], timeout=60)
    finally:
        finish([waiter], timeout=0)
    assert status == 0, err
    assert origin.stats("/blob.bin").gets == 1, "the waiter downloaded again"


@pytest.mark.parametrize("pause", list(WAITER_PAUSES))
def test_a_waiter_gets_the_data_of_the_population_it_waited_for_though_its_job_released_it_first(
        origin, base, tmp_path, pause):
    """A population whose job ends at once (``sc run -- true``, a quick test) released the last
    use before its waiter saw the population lock free: the release deleted the repository, and
    the waiter found nothing and downloaded it again (8 jobs asking at once downloaded it up to
    8 times).  The release leaves it for the waiter, whose own last release deletes it."""
    waiter, wait, _ = waiter_past_a_finished_population(origin, base, tmp_path, pause)
    try:
        # Unused, it outlives its release for the waiter: sc list says so, not that nobody holds it.
        listed = sc("list", "-d", str(base))
        assert listed.returncode == 0 and listed.stdout.splitlines()[1].split()[-1] == "waiters", listed.stdout
        assert [row["awaited"] for row in json.loads(sc("list", "--json", "-d", str(base)).stdout)] == [True]
    except BaseException:
        finish([waiter], timeout=0)
        raise
    let_go_without_download(origin, waiter, wait)
    assert [row["awaited"] for row in json.loads(sc("list", "--json", "-d", str(base)).stdout)] == []
    assert not list((control(base) / "objects").iterdir()), "the waiter's last release did not delete it"
    assert sc("gc", "-d", str(base)).returncode == 0
    assert not list((control(base) / "populate").glob("blob.*")), "gc left the population's files"


@pytest.mark.parametrize("evictor", ["gc", "use"])
def test_a_repository_left_for_its_waiter_is_not_evicted_before_the_waiter_holds_it(
        origin, base, tmp_path, evictor):
    """The repository that a release leaves for its waiter is over the budget (a population's
    store does not hold to it strictly): gc, which says it leaves an awaited repository, then
    evicted it to restore the budget, and so did any other use's eviction (here, one that sets
    a budget); the waiter downloaded it again."""
    waiter, wait, _ = waiter_past_a_finished_population(origin, base, tmp_path)
    try:
        budget = "100K"  # (the repository is 300 KB)
        if evictor == "gc":
            (control(base) / "budget").write_text("100000")  # (set by a use meanwhile)
            ran = sc("gc", "-d", str(base))
        else:
            small = origin.add("/small.bin", b"small")
            ran = sc("run", "-d", str(base), "-n", "small", f"http:{small}", "--max-size", budget, "--", "true")
        assert ran.returncode == 0, ran.stderr
        assert [entry.name for entry in (control(base) / "objects").iterdir()] == ["blob"], "evicted under its waiter"
    except BaseException:
        finish([waiter], timeout=0)
        raise
    let_go_without_download(origin, waiter, wait)


def test_gc_evict_refuses_a_repository_left_for_its_waiter_in_one_line(origin, base, tmp_path):
    """``sc gc --evict`` deletes no repository that a release left for the uses waiting for its
    population, kept or not: one line says so (exit status 1), and the waiter gets it."""
    waiter, wait, _ = waiter_past_a_finished_population(origin, base, tmp_path)
    try:
        refused = sc("gc", "-d", str(base), "--evict", "blob")
        assert refused.returncode == 1, refused
        (line,) = refused.stderr.splitlines()
        assert line.startswith(f"sc: error: repository 'blob' in {base} not evicted: ") and " is awaited: " in line, line
        assert [entry.name for entry in (control(base) / "objects").iterdir()] == ["blob"], "evicted under its waiter"
    except BaseException:
        finish([waiter], timeout=0)
        raise
    let_go_without_download(origin, waiter, wait)


@pytest.mark.parametrize("then", ["gc", "use"])
def test_a_repository_left_for_a_waiter_killed_meanwhile_is_deleted_by_gc_or_the_next_use(
        origin, base, tmp_path, then):
    """The repository that a release leaves unused for a waiter is not kept for good when that
    waiter is killed before it holds it: gc deletes it, and so does the release of the next use
    (which holds it, without downloading it again)."""
    waiter, _, recipe = waiter_past_a_finished_population(origin, base, tmp_path)
    try:
        waiter.kill()
        waiter.wait(10)
    finally:
        finish([waiter], timeout=0)
    objects = control(base) / "objects"
    assert [entry.name for entry in objects.iterdir()] == ["blob"], "not left for the waiter"
    if then == "gc":
        ran = sc("gc", "-d", str(base))
    else:
        ran = sc("run", *recipe, "--", "true")
        assert origin.stats("/blob.bin").gets == 1
    assert ran.returncode == 0, ran.stderr
    assert not list(objects.iterdir()), f"{then} did not delete the repository nobody uses or waits for"
    if then == "gc":
        assert not (control(base) / "populate" / "blob.waiting").exists(), "gc left the killed waiter's file"
        # (Its report said nothing of it: the file's removal was no population cleaned.)
        assert ", populations cleaned: 1," in ran.stdout, ran.stdout


def _fill_inodes(directory: Path) -> None:
    """Make empty files in ``directory`` until its file system has no inode left."""
    directory.mkdir()
    for i in range(1_000_000):
        try:
            (directory / str(i)).touch()
        except OSError:
            return


def test_a_waiter_that_cannot_make_the_waiters_file_is_spared_by_the_populator_s_release(origin, tmp_path):
    """On a file system out of inodes, a populator that made room by evicting kept data had no
    waiters' file (it found none when it asked), nor could a waiter make one: the populator's
    last release deleted the repository under the waiter, which downloaded it again."""
    with mounted_tmpfs(tmp_path / "small", "64m", inodes=200) as base:
        kept = tmp_path / "kept.tar"
        kept.write_bytes(tarball_bytes({f"f{i}": b"x" for i in range(40)}))
        assert sc("--use", "-n", "kept", "--keep", "-d", str(base), "--pid", str(os.getpid()),
                  f"file:{kept}", "tar").returncode == 0
        assert sc("--unuse", "-n", "kept", "-d", str(base), "--pid", str(os.getpid()),
                  f"file:{kept}", "tar").returncode == 0
        _fill_inodes(base / "others")
        payload = os.urandom(300_000)
        url = origin.add("/blob.bin", payload)
        recipe = ["-d", str(base), "-n", "blob", f"http:{url}", "sha256:" + hashlib.sha256(payload).hexdigest()]
        populator, populating, populate = started_paused(
            tmp_path, "populator", 'event == "os.mkdir" and str(args[0]).endswith(".work")', "run", *recipe, "--", "true")
        waiter = None
        try:
            wait_for(populating.exists, what="the populator")
            _fill_inodes(base / "more")  # (what the eviction freed, taken by others)
            waiter, waiting, wait = started_paused(tmp_path, "waiter", WAITER_PAUSES["waiting"], "--use", "--pid",
                                                   str(os.getpid()), *recipe)
            wait_for(waiting.exists, what="the waiter")
            subprocess.run(["rm", "-rf", str(base / "more")], check=True, timeout=60)  # room for the commit
            populate.touch()
            ((status, _, err),) = finish([populator], timeout=60)
            assert status == 0, err
            wait.touch()
            ((status, out, err),) = finish([waiter], timeout=60)
            assert (status, err) == (0, ""), err  # (nothing said of a file it could not make)
            assert Path(out.strip(), "blob.bin").read_bytes() == payload
        finally:
            finish([populator, *([waiter] if waiter else [])], timeout=0)
        assert origin.stats("/blob.bin").gets == 1, "the waiter downloaded it again"
