"""A base directory shared by a group: two real users, each with a umask that shares nothing,
share one repository and one download, and either can delete what the other created."""

from __future__ import annotations

import errno
import json
import os
import select
import stat
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from scutil import Sleeper, interpreter_for, make_tarball, mounted_bindfs, pause_at, sample_files, sc, sc_env

from sharedcache.engine.fsutil import rename_noreplace

ALICE, BOB, CAROL, GROUP = 41001, 41002, 41003, 41500
FILES = sample_files(n=5, size=20_000)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")


@pytest.fixture
def shared(reachable_tmp: Path) -> Path:
    """A world-writable sticky directory, like /tmp, that every test user can reach."""
    reachable_tmp.chmod(0o1777)
    return reachable_tmp


@pytest.fixture(scope="module")
def python() -> tuple[str, dict[str, str]]:
    return interpreter_for(ALICE, GROUP)


def as_user(python, uid: int, *args: str, groups: tuple[int, ...] = (GROUP,),  # type: ignore[no-untyped-def]
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    interpreter, python_env = python
    # (what is no UTF-8 read as sc writes it, a path's bytes: lone surrogates)
    return subprocess.run([interpreter, "-m", "sharedcache", *args], capture_output=True, text=True,
                          errors="surrogateescape", timeout=60, env=env or python_env, user=uid,
                          group=groups[0] if groups else uid, extra_groups=list(groups), umask=0o077)


def read_as(python, uid: int, path: Path) -> subprocess.CompletedProcess:  # type: ignore[no-untyped-def]
    interpreter, env = python
    code = ("import sys; sys.path.insert(0, sys.argv[2]); from pathlib import Path; "
            "from scutil import check_tree, sample_files; "
            "check_tree(Path(sys.argv[1]), sample_files(n=5, size=20_000))")
    return subprocess.run([interpreter, "-c", code, str(path), str(Path(__file__).parent)],
                          capture_output=True, text=True, timeout=60, env=env, user=uid, group=GROUP)


def test_two_users_share_one_download_through_a_group_cache(shared, origin, python):
    tarball = shared / "data.tar.gz"
    md5 = make_tarball(tarball, FILES)
    url = origin.add("/data.tar.gz", tarball.read_bytes())
    base = shared / "base"
    base.mkdir()
    base.chmod(0o1777)
    words = ["-n", "repo", "-d", str(base), f"http:{url}", f"md5:{md5}", "tar"]
    group = ["--group", str(GROUP)]
    with Sleeper() as alice_job, Sleeper() as bob_job:
        first = as_user(python, ALICE, "--use", *group, "--pid", str(alice_job.pid), *words)
        assert first.returncode == 0, first.stderr
        second = as_user(python, BOB, "--use", *group, "--pid", str(bob_job.pid), *words)
        assert second.returncode == 0, second.stderr
        # Each member's path is in their own directory; both lead to the one download.
        assert first.stdout.strip() == str(base / f".shared-cache-{ALICE}" / "repo")
        assert second.stdout.strip() == str(base / f".shared-cache-{BOB}" / "repo")
        assert os.path.realpath(first.stdout.strip()) == os.path.realpath(second.stdout.strip())
        assert origin.stats("/data.tar.gz").gets == 1, "bob shared alice's download"
        path = Path(second.stdout.strip())
        assert read_as(python, BOB, path).returncode == 0

        control = base / f".shared-cache-g{GROUP}"
        st = control.stat()
        assert st.st_gid == GROUP and stat.S_IMODE(st.st_mode) == 0o2770
        for item in control.rglob("*"):
            mode = item.lstat().st_mode
            assert item.lstat().st_gid == GROUP, item
            assert not mode & 0o002, (item, oct(mode))
            if "data" in item.relative_to(control).parts:
                # Committed data: nobody may change it, the group included (whatever the umask).
                assert stat.S_IMODE(mode) in (0o444, 0o555), (item, oct(mode))
            elif item.is_dir() and item.parent.name != "stage":
                assert mode & 0o070 == 0o070, (item, oct(mode))  # whatever alice's umask (077)
            elif item.parent.name != "leases":
                assert mode & 0o060 == 0o060, (item, oct(mode))
        # A user outside the group is refused the group cache, and told why.
        outsider = as_user(python, CAROL, "--use", *group, *words, groups=())
        assert outsider.returncode == 1 and "not in" in outsider.stderr

        # Alice leaves first; bob's release is the last and deletes the repository alice made.
        assert as_user(python, ALICE, "--unuse", *group, "--pid", str(alice_job.pid), *words).returncode == 0
        assert path.exists()
        last = as_user(python, BOB, "--unuse", *group, "--pid", str(bob_job.pid), *words)
        assert last.returncode == 0, last.stderr
        assert not (control / "objects" / "repo").exists()
        # Its read-only tree can only be emptied by its committer: alice's next command does it.
        assert as_user(python, ALICE, "gc", *group, "-d", str(base)).returncode == 0
        assert list((control / "trash").iterdir()) == []


def test_a_member_may_gc_evict_a_repository_another_member_kept_once_nobody_uses_it(shared, python):
    # Members may delete unused repositories: one kept by another member is evicted by its name,
    # never while that member's job uses it.
    tarball = shared / "data.tar.gz"
    md5 = make_tarball(tarball, FILES)
    other = shared / "other.bin"
    other.write_bytes(b"another recipe")
    base = shared / "base"
    base.mkdir()
    base.chmod(0o1777)
    group = ["--group", str(GROUP), "-d", str(base)]
    words = [*group, "-n", "repo", f"file:{tarball}", f"md5:{md5}", "tar"]
    alice_link = base / f".shared-cache-{ALICE}" / "repo"
    with Sleeper() as alice_job:
        used = as_user(python, ALICE, "--use", "--keep", "--pid", str(alice_job.pid), *words)
        assert used.returncode == 0, used.stderr
        refused = as_user(python, BOB, "gc", *group, "--evict", "repo")
        assert refused.returncode == 1, refused
        (line,) = refused.stderr.splitlines()
        assert line.startswith(f"sc: error: repository 'repo' in {base} not evicted: ") \
            and line.endswith(f" is in use by process {alice_job.pid}"), line
        assert read_as(python, ALICE, alice_link).returncode == 0, "its data was touched"
        assert as_user(python, ALICE, "--unuse", "--pid", str(alice_job.pid), *words).returncode == 0
    evicted = as_user(python, BOB, "gc", *group, "--evict", "repo")
    assert (evicted.returncode, evicted.stderr) == (0, ""), evicted
    assert evicted.stdout.startswith(f"{base}: evicted: 'repo'"), evicted.stdout
    # Alice's link goes at her next gc (only her own are in a member's reach), which also empties
    # the trash of the tree only she may unlink; then the name is hers to use with another recipe.
    assert as_user(python, ALICE, "gc", *group).returncode == 0
    assert not alice_link.is_symlink()
    assert list((base / f".shared-cache-g{GROUP}" / "trash").iterdir()) == []
    with Sleeper() as alice_job:
        again = as_user(python, ALICE, "--use", *group, "--pid", str(alice_job.pid), "-n", "repo", f"file:{other}")
        assert again.returncode == 0, again.stderr
        assert (Path(again.stdout.strip()) / "other.bin").read_bytes() == b"another recipe"


def test_a_group_cache_on_a_file_system_that_cannot_rename_without_replacing_is_made_in_place(shared, python):
    # Its directories are made aside and renamed into place with RENAME_NOREPLACE, which some
    # file systems refuse (EINVAL: FUSE's bindfs here, some network ones): there they are made in
    # place and given their mode then, and nothing is left under a temporary name.
    disk = shared / "disk"
    disk.mkdir()
    disk.chmod(0o755)
    tarball = shared / "data.tar.gz"
    md5 = make_tarball(tarball, FILES)
    with mounted_bindfs(disk, shared / "view", "-o", "allow_other") as view:
        probe = view / "probe"
        probe.mkdir()
        with pytest.raises(OSError) as refused:
            rename_noreplace(str(probe), str(view / "renamed"))
        assert refused.value.errno == errno.EINVAL, "this file system renames without replacing: no fallback here"
        base = view / "base"
        base.mkdir()
        base.chmod(0o1777)
        words = ["--group", str(GROUP), "-n", "repo", "-d", str(base), f"file:{tarball}", f"md5:{md5}", "tar"]
        with Sleeper() as job:
            for member in (ALICE, BOB):  # each with umask 077
                used = as_user(python, member, "--use", "--pid", str(job.pid), *words)
                assert used.returncode == 0, used.stderr
                assert read_as(python, member, Path(used.stdout.strip())).returncode == 0
            control = base / f".shared-cache-g{GROUP}"
            st = control.stat()
            assert st.st_gid == GROUP and stat.S_IMODE(st.st_mode) == 0o2770
            for name in ("objects", "stage", "trash", "populate"):
                st = (control / name).stat()
                assert st.st_gid == GROUP and st.st_mode & 0o070 == 0o070, (name, oct(st.st_mode))
            assert not [path for path in base.rglob("*") if ".tmp-" in path.name]


def test_a_setgid_directory_makes_no_group_cache_without_consent(shared, python):
    tarball = shared / "data.tar.gz"
    md5 = make_tarball(tarball, FILES)
    base = shared / "project"
    base.mkdir()
    os.chown(base, 0, GROUP)
    base.chmod(0o2775)  # the group's project directory: setgid, writable by the group
    words = ["-n", "repo", "-d", str(base), f"file:{tarball}", f"md5:{md5}", "tar"]
    with Sleeper() as alice_job, Sleeper() as bob_job:
        # Without --group: the base is not safe for a private cache (any member could move
        # things in it), so it is refused, with the way to share it named.
        alone = as_user(python, ALICE, "--use", "--pid", str(alice_job.pid), *words)
        assert alone.returncode == 1 and f"--group {GROUP}" in alone.stderr
        assert sorted(os.listdir(base)) == []
        first = as_user(python, ALICE, "--use", "--group", str(GROUP), "--pid", str(alice_job.pid), *words)
        assert first.returncode == 0, first.stderr
        second = as_user(python, BOB, "--use", "--group", str(GROUP), "--pid", str(bob_job.pid), *words)
        assert second.returncode == 0, second.stderr
        control = base / f".shared-cache-g{GROUP}"
        assert control.stat().st_gid == GROUP and control.stat().st_mode & 0o2070 == 0o2070
        assert read_as(python, BOB, Path(second.stdout.strip())).returncode == 0


def test_the_python_api_uses_a_group_cache_when_asked_by_argument_or_config_file(shared, tmp_path, monkeypatch):
    import grp

    import sharedcache
    from sharedcache import UsageError

    tarball = shared / "data.tar.gz"
    md5 = make_tarball(tarball, FILES)
    words = (f"file:{tarball}", f"md5:{md5}", "tar")
    gid = os.getgid()
    monkeypatch.setenv("SC_CONFIG", os.devnull)
    with sharedcache.use(*words, name="repo", directories=[shared], group=gid) as path:
        assert path.resolve().parent.parent == shared / f".shared-cache-g{gid}" / "objects"
        assert (shared / f".shared-cache-g{gid}").stat().st_mode & 0o2070 == 0o2070
    config = tmp_path / "config"
    config.write_text(f"group = {grp.getgrgid(gid).gr_name}\n")
    monkeypatch.setenv("SC_CONFIG", str(config))
    with sharedcache.use(*words, name="again", directories=[shared]) as path:
        assert path.resolve().parent.parent == shared / f".shared-cache-g{gid}" / "objects"
    with pytest.raises(UsageError, match=r"^use\(group=\.\.\.\) 'no-such-group-here': no such group$"), \
            sharedcache.use(*words, name="none", directories=[shared], group="no-such-group-here"):
        pass


def test_a_group_that_names_no_group_is_one_line(tmp_path):
    # '²' passed str.isdigit and failed int(), a NUL failed getgrnam: both internal errors.
    words = ("file:/nonexistent.tar", "tar")
    config = tmp_path / "config"
    config.write_bytes(b"group = a\0b\n")
    for group, env in (("\u00b2", sc_env()), ("\u2460", sc_env()), ("\u0661", sc_env()),
                       (None, sc_env(SC_CONFIG=str(config)))):
        options = ("--group", group) if group is not None else ()
        result = sc("--use", "-d", str(tmp_path), *options, *words, env=env)
        where, hint = ("--group", " (see 'sc --help')") if group is not None else (f"{config}:1: group", "")
        shown = repr(group if group is not None else "a\0b")
        assert (result.returncode, result.stderr) == (2, f"sc: error: {where} {shown}: no such group{hint}\n")


# Bob holds the population locks of names in the group cache, each beside a status record of
# his writing, as any member could.
_HELD_POPULATIONS = """
import fcntl, os, sys, time
populate, record, *names = sys.argv[1:]
for name in names:
    fd = os.open(os.path.join(populate, name + ".lock"), os.O_RDWR | os.O_CREAT, 0o660)
    fcntl.flock(fd, fcntl.LOCK_EX)
    with open(os.path.join(populate, name + ".json"), "w") as status:
        status.write(record)
print("ready", flush=True)
time.sleep(60)
"""


@contextmanager
def held_populations(python: tuple[str, dict[str, str]], base: Path, names: list[str],
                     record: dict[str, object]) -> Iterator[None]:
    """Bob's populations of ``names`` in the group cache of ``base``, each with the status record
    ``record`` (JSON, as Python writes it: NaN too), their locks held until the block is left."""
    interpreter, env = python
    populate = base / f".shared-cache-g{GROUP}" / "populate"
    bob = subprocess.Popen([interpreter, "-c", _HELD_POPULATIONS, str(populate), json.dumps(record), *names],
                           stdout=subprocess.PIPE, text=True, env=env, user=BOB, group=GROUP, extra_groups=[GROUP])
    try:
        assert bob.stdout is not None and select.select([bob.stdout], [], [], 30)[0], "bob never got ready"
        assert bob.stdout.readline() == "ready\n"
        yield
    finally:
        bob.kill()
        bob.wait(10)


@pytest.mark.parametrize("garbled", [
    {"pid": "me", "identity": 7, "size": "lots", "done": [1], "total": -5, "started": float("nan"),
     "time": float("inf")},
    # Numbers of their kind's type past what a float holds: the share done of a total that is a
    # fraction of a byte was infinite, an integer too large to be a float failed every reader (a
    # use with --size in the base too), each as "internal error (OverflowError ...)".
    {"done": 1, "total": 1e-320},
    {"pid": 10**400, "size": 10**400, "done": 10**400, "total": 10**400, "started": 10**400},
], ids=["wrong kinds", "a fraction of a byte", "past a float"])
def test_a_members_garbled_population_record_fails_nobody_else(shared, python, garbled):
    tarball = shared / "data.tar.gz"
    md5 = make_tarball(tarball, FILES)
    base = shared / "base"
    base.mkdir()
    base.chmod(0o1777)
    group = ["--group", str(GROUP), "-d", str(base)]
    words = [f"file:{tarball}", f"md5:{md5}", "tar"]
    with Sleeper() as alice_job:
        made = as_user(python, ALICE, "--use", *group, "-n", "first", "--pid", str(alice_job.pid), *words)
        assert made.returncode == 0, made.stderr
        with held_populations(python, base, ["x"], garbled):
            listed = as_user(python, ALICE, "list", *group)
            assert listed.returncode == 0, listed.stderr
            assert "x" in listed.stdout.split() and "populating" in listed.stdout
            waited = as_user(python, ALICE, "--use", *group, "-n", "x", "--timeout", "1", "-v",
                             "--pid", str(alice_job.pid), *words)
            assert waited.returncode == 1 and "internal error" not in waited.stderr, waited.stderr
            assert waited.stderr.splitlines()[-1].startswith("sc: error: repository 'x': timed out"), waited.stderr
            other = as_user(python, ALICE, "--use", *group, "-n", "other", "--size", "1M",
                            "--pid", str(alice_job.pid), *words)
            assert other.returncode == 0, other.stderr


_HUGE_FAILURE = """
import fcntl, json, os, sys, time
populate = sys.argv[1]
fd = os.open(os.path.join(populate, "x.lock"), os.O_RDWR | os.O_CREAT, 0o660)
fcntl.flock(fd, fcntl.LOCK_EX)
print("ready", flush=True)
sys.stdin.readline()  # the waiter has asked: a failure recorded now is one it is told of
with open(os.path.join(populate, "x.error"), "w") as record:
    json.dump({"time": time.time(), "error": "DownloadError",
               "message": "A" * 30000 + "\\x1b[2J" + "Z" * 30000}, record)
"""


def test_a_members_recorded_failure_reaches_the_waiters_as_one_short_line(shared, python):
    # A population's failure is recorded for its waiters, in a file any member may write: one of
    # 64 KiB became a line of 64 KiB on each waiter's terminal.
    base = shared / "base"
    base.mkdir()
    base.chmod(0o1777)
    group = ["--group", str(GROUP), "-d", str(base)]
    interpreter, env = python
    tarball = shared / "data.tar.gz"
    md5 = make_tarball(tarball, FILES)
    with Sleeper() as alice_job:
        made = as_user(python, ALICE, "--use", *group, "-n", "first", "--pid", str(alice_job.pid),
                       f"file:{tarball}", f"md5:{md5}", "tar")
        assert made.returncode == 0, made.stderr
        populate = base / f".shared-cache-g{GROUP}" / "populate"
        bob = subprocess.Popen([interpreter, "-c", _HUGE_FAILURE, str(populate)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True, env=env, user=BOB, group=GROUP,
                               extra_groups=[GROUP])
        alice = None
        try:
            assert bob.stdout is not None and select.select([bob.stdout], [], [], 30)[0], "bob never got ready"
            assert bob.stdout.readline() == "ready\n"
            alice = subprocess.Popen([interpreter, "-m", "sharedcache", "--use", *group, "-n", "x", "-v",
                                      "--pid", str(alice_job.pid), "file:/nonexistent"],
                                     stderr=subprocess.PIPE, text=True, env=env, user=ALICE, group=GROUP,
                                     extra_groups=[GROUP], umask=0o077)
            assert alice.stderr is not None and select.select([alice.stderr], [], [], 30)[0]
            assert "waiting" in alice.stderr.readline()
            assert bob.stdin is not None
            bob.stdin.write("go\n")
            bob.stdin.close()
            rest = alice.stderr.read()
            assert alice.wait(30) == 1
        finally:
            for process in (bob, alice):
                if process is not None and process.poll() is None:
                    process.kill()
                    process.wait(10)
    line = rest.splitlines()[-1]
    assert line.startswith("sc: error: AAAA") and line.endswith("ZZZZ (60,007 characters)"), line[-100:]
    assert len(line) < 4100 and "\x1b" not in line


_CRAFTED_POPULATOR = """
import fcntl, json, os, sys
populate = sys.argv[1]
fd = os.open(os.path.join(populate, "x.lock"), os.O_RDWR | os.O_CREAT, 0o660)
fcntl.flock(fd, fcntl.LOCK_EX)
with open(os.path.join(populate, "x.json"), "w") as record:
    json.dump({"pid": 1, "owner": "b:1:0:1:" + "\x1b[2J" + "M" * 60000, "done": 0}, record)
print("ready", flush=True)
sys.stdin.readline()
"""


def test_a_members_crafted_populator_key_is_no_line_of_hers(shared, python):
    # The status record names its populator as a lease does: bob's key of 60 kB, with a terminal
    # control, was each waiter's waiting line as it was, and the listing's row.
    source, base, group = file_in_a_group_cache(shared)
    interpreter, env = python
    with Sleeper() as alice_job:
        made = as_user(python, ALICE, "--use", *group, "-n", "first", "--pid", str(alice_job.pid),
                       f"file:{source}")
        assert made.returncode == 0, made.stderr
        populate = base / f".shared-cache-g{GROUP}" / "populate"
        bob = subprocess.Popen([interpreter, "-c", _CRAFTED_POPULATOR, str(populate)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True, env=env, user=BOB, group=GROUP,
                               extra_groups=[GROUP])
        try:
            assert bob.stdout is not None and select.select([bob.stdout], [], [], 30)[0], "bob never got ready"
            assert bob.stdout.readline() == "ready\n"
            waited = as_user(python, ALICE, "--use", *group, "-n", "x", "-v", "--timeout", "1",
                             "--pid", str(alice_job.pid), "file:/nonexistent")
            listed = as_user(python, ALICE, "list", *group)
        finally:
            bob.kill()
            bob.wait(10)
    assert waited.returncode == 1 and "waiting 0 s for process 1 " in waited.stderr, waited.stderr[:300]
    assert "\x1b" not in waited.stderr and "MMMM" not in waited.stderr, waited.stderr[:300]
    assert listed.returncode == 0 and "populating" in listed.stdout, listed.stderr
    assert "MMMM" not in listed.stdout, listed.stdout[:300]


def test_a_members_stuck_population_cannot_steer_the_gc_report_of_another(shared, python):
    # Bob's population, named with a terminal's controls and a line break, its process ended and
    # its lock held: alice's gc named it escaped, but its lock's path (in `fuser PATH`) raw, which
    # set her terminal's title, cleared her screen and split the report.
    source, base, group = file_in_a_group_cache(shared, base_name="base\x1b[31m")
    made = as_user(python, ALICE, "--use", *group, "-n", "first", f"file:{source}")
    assert made.returncode == 0, made.stderr
    ended = subprocess.Popen(["true"])
    ended.wait(10)
    # (and a byte that is no UTF-8, the C1 control CSI to a terminal that reads 8-bit text)
    with held_populations(python, base, ["x\x1b]0;OWNED\x07\x1b[2J\ntwo\udc9b2J"], {"pid": ended.pid}):
        collected = as_user(python, ALICE, "gc", *group)
    assert collected.returncode == 0 and "stuck populations" in collected.stdout, collected.stderr
    report = collected.stdout.removesuffix("\n")
    assert report.isprintable(), report
    assert report.startswith(f"{shared}/base\\x1b[31m: ") and "fuser" in report, report
    assert report.count("x\\x1b]0;OWNED\\x07\\x1b[2J\\ntwo\\udc9b2J") == 2, report  # the name, and its lock's


def test_a_members_many_stuck_populations_keep_the_gc_report_a_short_line(shared, python):
    # Bob's 300 populations, their process ended and their locks held: alice's gc named each,
    # with why, in the one line of its report for the base (over 100 kB).
    source, base, group = file_in_a_group_cache(shared)
    made = as_user(python, ALICE, "--use", *group, "-n", "first", f"file:{source}")
    assert made.returncode == 0, made.stderr
    ended = subprocess.Popen(["true"])
    ended.wait(10)
    names = [f"stuck-{number:03}" for number in range(300)]
    with held_populations(python, base, names, {"pid": ended.pid}):
        collected = as_user(python, ALICE, "gc", *group)
    assert collected.returncode == 0, collected.stderr
    report = collected.stdout.removesuffix("\n")
    assert "\n" not in report and len(report) < 4000, report[:300]
    named = [name for name in names if repr(name) in report]
    assert named == names[:5] and "; and 295 more" in report, report


def test_a_members_population_that_claims_more_room_than_the_file_system_holds_reserves_none(shared, python):
    # Bob's status record, its lock held, claims 2^62 bytes: every use with --size in the base
    # found no room there, nothing to evict making it up, and gc said nothing of it.
    source, base, group = file_in_a_group_cache(shared)
    made = as_user(python, ALICE, "--use", *group, "-n", "first", f"file:{source}")
    assert made.returncode == 0, made.stderr
    with Sleeper() as alice_job, held_populations(python, base, ["x"], {"size": 2**62, "done": 0}):
        sized = as_user(python, ALICE, "--use", *group, "-n", "sized", "--size", "1M", "--pid", str(alice_job.pid),
                        f"file:{source}")
        collected = as_user(python, ALICE, "gc", *group)
    assert sized.returncode == 0, sized.stderr
    assert sized.stdout.strip() == str(base / f".shared-cache-{ALICE}" / "sized")
    assert collected.returncode == 0, collected.stderr
    assert "reservations ignored: 'x' (4194304.0 TiB, where the file system holds " in collected.stdout, \
        collected.stdout


_ANOTHER_RECIPES_FAILURE = """
import fcntl, json, os, sys, time
populate = sys.argv[1]
fd = os.open(os.path.join(populate, "x.lock"), os.O_RDWR | os.O_CREAT, 0o660)
fcntl.flock(fd, fcntl.LOCK_EX)
print("ready", flush=True)
sys.stdin.readline()  # the waiter has asked
with open(os.path.join(populate, "x.error"), "w") as record:
    json.dump({"time": time.time(), "error": "DownloadError", "identity": "file:/elsewhere",
               "message": "repository 'x': file:/elsewhere: no such file"}, record)
"""


def test_a_failure_of_another_recipe_under_the_name_is_not_a_waiters(shared, python):
    # Two jobs gave one name (-n) to two recipes: the first failed as the second waited for it,
    # and the second was told the first one's failure, its own recipe never tried.
    source, base, group = file_in_a_group_cache(shared)
    interpreter, env = python
    made = as_user(python, ALICE, "--use", *group, "-n", "first", f"file:{source}")
    assert made.returncode == 0, made.stderr
    populate = base / f".shared-cache-g{GROUP}" / "populate"
    bob = subprocess.Popen([interpreter, "-c", _ANOTHER_RECIPES_FAILURE, str(populate)], stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, text=True, env=env, user=BOB, group=GROUP, extra_groups=[GROUP])
    alice = None
    try:
        assert bob.stdout is not None and select.select([bob.stdout], [], [], 30)[0], "bob never got ready"
        assert bob.stdout.readline() == "ready\n"
        alice = subprocess.Popen([interpreter, "-m", "sharedcache", "--use", *group, "-n", "x", "-v",
                                  f"file:{source}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True, env=env, user=ALICE, group=GROUP, extra_groups=[GROUP], umask=0o077)
        assert alice.stderr is not None and select.select([alice.stderr], [], [], 30)[0]
        assert "waiting" in alice.stderr.readline()
        assert bob.stdin is not None
        bob.stdin.write("go\n")
        bob.stdin.close()
        assert bob.wait(30) == 0
        out, err = alice.communicate(timeout=60)
    finally:
        for process in (bob, alice):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait(10)
    assert alice.returncode == 0 and "elsewhere" not in err, err
    assert os.path.realpath(out.strip()).startswith(str(base))


def test_a_members_failure_record_dated_in_the_future_is_not_listed(shared, python):
    # A failure record dated in the future fails no use, but sc list showed it as a failure
    # "0 s ago" for as long as its date was ahead, and gc, which removes the old ones, never did.
    import json
    import time

    source, base, group = file_in_a_group_cache(shared)
    made = as_user(python, ALICE, "--use", *group, "-n", "first", f"file:{source}")
    assert made.returncode == 0, made.stderr
    interpreter, env = python
    planted = ("import json, sys\n"
               "with open(sys.argv[1], 'w') as record:\n"
               "    json.dump({'time': float(sys.argv[2]), 'error': 'DownloadError', 'message': 'PLANTED'}, record)\n")
    record = base / f".shared-cache-g{GROUP}" / "populate" / "x.error"
    for when in (time.time() + 86400 * 365, time.time() - 5):
        wrote = subprocess.run([interpreter, "-c", planted, str(record), str(when)], capture_output=True, text=True,
                               timeout=60, env=env, user=BOB, group=GROUP, extra_groups=[GROUP])
        assert wrote.returncode == 0, wrote.stderr
        listed = as_user(python, ALICE, "list", *group)
        assert listed.returncode == 0, listed.stderr
        rows = [line for line in listed.stdout.splitlines() if line.startswith("x ")]
        assert rows == ([] if when > time.time() else [rows[0]]), listed.stdout
    assert "failed" in rows[0] and "PLANTED" in rows[0]
    assert json.loads(record.read_text())["message"] == "PLANTED"


# Loaded by alice's sc as its sitecustomize: it pauses, for bob to make the index's journals,
# before she looks at the files beside the index (as she opens it to make it if missing), or
# once SQLite has opened the index, before SQLite opens the journals.
_PAUSES = {"before she looks": pause_at('event == "open" and args[0] == "index.sqlite"'),
           "as she connects": pause_at('event == "sqlite3.connect/handle"')}

# Bob's SQLite making the journals: with the mode his umask leaves, then, a moment later
# (a process the scheduler put aside), with the index's.
_JOURNALS_MADE_AS_SQLITE_MAKES_THEM = """
import os, sys, time
root, paused, go = sys.argv[1:]
end = time.monotonic() + 30
while not os.path.exists(paused) and time.monotonic() < end:
    time.sleep(0.005)
mode = os.stat(os.path.join(root, "index.sqlite")).st_mode & 0o777
journals = [os.path.join(root, "index.sqlite" + suffix) for suffix in ("-wal", "-shm")]
for journal in journals:
    os.close(os.open(journal, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode))
open(go, "w").close()
time.sleep(0.3)
for journal in journals:
    os.chmod(journal, mode)
"""


def file_in_a_group_cache(shared: Path, base_name: str = "base") -> tuple[Path, Path, list[str]]:
    """A small file to use as a source, a fresh base like /tmp, and the options that name the
    group's cache there."""
    source = shared / "data.bin"
    source.write_bytes(b"data\n")
    base = shared / base_name
    base.mkdir()
    base.chmod(0o1777)
    return source, base, ["--group", str(GROUP), "-d", str(base)]


@pytest.mark.parametrize("umask", [0o077, 0o022])
@pytest.mark.parametrize("moment", ["before she looks", "as she connects"])
def test_journals_another_member_is_making_are_waited_for(shared, python, umask, moment):
    # The first connection to the index makes its journals (-wal, -shm) with the umask's mode,
    # then gives them the index's.  A member whose SQLite opened them in between could not
    # (with bob's umask 077) or got them read-only (022; her writes then failed), and one who
    # looked at them first refused them as a plant: her command said the index was unusable,
    # and advised a gc that rebuilt it.
    source, base, group = file_in_a_group_cache(shared)
    made = as_user(python, ALICE, "--use", "--keep", *group, "-n", "kept", f"file:{source}")
    assert made.returncode == 0, made.stderr
    root = base / f".shared-cache-g{GROUP}"
    assert not (root / "index.sqlite-wal").exists(), "the last connection removes the journals"
    site, paused, go = shared / "site", shared / "paused", shared / "go"
    site.mkdir()
    (site / "sitecustomize.py").write_text(_PAUSES[moment])
    interpreter, env = python
    bob = subprocess.Popen([interpreter, "-c", _JOURNALS_MADE_AS_SQLITE_MAKES_THEM, str(root), str(paused), str(go)],
                           env=env, user=BOB, group=GROUP, extra_groups=[GROUP], umask=umask)
    try:
        second = as_user(python, ALICE, "--use", "--keep", *group, "-n", "second", f"file:{source}",
                         env={**env, "PYTHONPATH": f"{site}:{env['PYTHONPATH']}",
                              "SC_TEST_PAUSED": str(paused), "SC_TEST_GO": str(go)})
        assert bob.wait(30) == 0
    finally:
        if bob.poll() is None:
            bob.kill()
            bob.wait(10)
    assert go.exists(), "bob did not make the journals"
    assert second.returncode == 0 and second.stderr == "", second.stderr
    listed = as_user(python, BOB, "list", *group)
    assert listed.returncode == 0, listed.stderr
    assert {"kept", "second"} <= set(listed.stdout.split()), listed.stdout


def test_a_lock_file_another_member_is_making_is_never_refused(shared, python):
    # A population's lock file (populate/<name>.lock) was made with the mode the maker's umask
    # left, then given the group's: with bob's umask 077 it was bob's alone for a moment, and
    # alice's use of the same name, opening it then, failed with "Permission denied" (as did her
    # gc and her releases).  Bob is paused at that moment: alice gets her repository.
    source, base, group = file_in_a_group_cache(shared)
    made = as_user(python, ALICE, "--use", "--keep", *group, "-n", "first", f"file:{source}")
    assert made.returncode == 0, made.stderr
    site, paused, go = shared / "site", shared / "paused", shared / "go"
    site.mkdir()
    (site / "sitecustomize.py").write_text(pause_at('event == "os.chmod" and isinstance(args[0], int) '
                                                    'and args[1] == 0o660'))
    interpreter, env = python
    bob = subprocess.Popen([interpreter, "-m", "sharedcache", "--use", "--keep", *group, "-n", "shared",
                            f"file:{source}"], env={**env, "PYTHONPATH": f"{site}:{env['PYTHONPATH']}",
                                                    "SC_TEST_PAUSED": str(paused), "SC_TEST_GO": str(go)},
                           user=BOB, group=GROUP, extra_groups=[GROUP], umask=0o077,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(3000):
            if paused.exists() or bob.poll() is not None:
                break
            select.select([], [], [], 0.01)
        assert paused.exists(), "bob never made the lock file"
        second = as_user(python, ALICE, "--use", "--keep", *group, "-n", "shared", f"file:{source}")
        collected = as_user(python, ALICE, "gc", *group)
    finally:
        go.touch()
        out, err = bob.communicate(timeout=60)
    assert second.returncode == 0 and second.stderr == "", second.stderr
    assert collected.returncode == 0 and "Permission denied" not in collected.stderr, collected.stderr
    assert bob.returncode == 0, err
    assert out.strip() == str(base / f".shared-cache-{BOB}" / "shared")
    for lock in (base / f".shared-cache-g{GROUP}" / "populate").glob("*.lock"):
        assert stat.S_IMODE(lock.stat().st_mode) == 0o660, lock


def test_a_members_listing_during_a_population_leaves_its_lock_file_to_the_group(shared, python):
    # Listing a population in progress opened its lock file with the private default mode, and
    # "fixed" it to 0600 if it was the lister's own file: every other member's use, release and
    # gc of that name then failed with "Permission denied", until the lister removed it.
    import fcntl
    import json

    source, base, group = file_in_a_group_cache(shared)
    with Sleeper() as job:
        made = as_user(python, ALICE, "--use", *group, "--pid", str(job.pid), "-n", "busy", f"file:{source}")
        assert made.returncode == 0, made.stderr
        populate = base / f".shared-cache-g{GROUP}" / "populate"
        lock = populate / "busy.lock"
        assert stat.S_IMODE(lock.stat().st_mode) == 0o660
        # A population of "busy" in progress (another member's, say): its lock held, its status there.
        status = populate / "busy.json"
        status.write_text(json.dumps({"pid": os.getpid(), "done": 0, "total": None}))
        status.chmod(0o644)
        held = os.open(lock, os.O_RDONLY)
        try:
            fcntl.flock(held, fcntl.LOCK_EX)
            listed = as_user(python, ALICE, "list", *group)
            assert listed.returncode == 0, listed.stderr
            assert "populating" in listed.stdout, listed.stdout
        finally:
            os.close(held)
            status.unlink()
        assert stat.S_IMODE(lock.stat().st_mode) == 0o660, "alice's listing took the lock from the group"
        released = as_user(python, BOB, "--unuse", *group, "--pid", str(job.pid), "-n", "busy", f"file:{source}")
        assert "Permission denied" not in released.stderr, released.stderr
        collected = as_user(python, BOB, "gc", *group)
        assert collected.returncode == 0 and "Permission denied" not in collected.stderr, collected.stderr


def test_a_lock_file_left_under_its_temporary_name_is_removed_by_gc_and_never_fails_a_use(shared, python):
    # A lock file is made under ".<name>.lock.tmp-<random>", then linked into place: a member
    # that ended between the two (killed, out of its time) left that name behind, which no gc
    # removed.  gc removes it once old; a fresh one (a member making its lock now) stays, and a
    # member whose temporary file gc removed meanwhile still gets its lock file.
    import time

    from sharedcache.engine import locks

    source, base, group = file_in_a_group_cache(shared)
    made = as_user(python, ALICE, "--use", "--keep", *group, "-n", "first", f"file:{source}")
    assert made.returncode == 0, made.stderr
    populate = base / f".shared-cache-g{GROUP}" / "populate"
    old, fresh = populate / ".first.lock.tmp-0123456789abcdef01234567", populate / ".other.lock.tmp-aa"
    for path in (old, fresh):
        path.touch(mode=0o660)
    long_ago = time.time() - 2 * 3600  # (a member that ended hours ago)
    os.utime(old, (long_ago, long_ago))
    collected = as_user(python, BOB, "gc", *group)
    assert collected.returncode == 0, collected.stderr
    assert not old.exists() and fresh.exists()
    # The temporary file removed under a member that makes its lock file: it makes it again.
    real_link = os.link

    def link_after_gc(src, dst, **kwargs):  # type: ignore[no-untyped-def]
        os.unlink(src, dir_fd=kwargs.get("src_dir_fd"))
        os.link = real_link
        return real_link(src, dst, **kwargs)

    os.link = link_after_gc
    try:
        fd = locks.open_lock_file(populate / "third.lock", mode=0o660)
    finally:
        os.link = real_link
    os.close(fd)
    assert stat.S_IMODE((populate / "third.lock").stat().st_mode) == 0o660
    assert not list(populate.glob(".third.lock.tmp-*"))


# Loaded by alice's sc as its sitecustomize: it pauses her as she gives the directory she makes
# the N-th time ($SC_TEST_NTH) the group's mode (the cache's own, objects, stage, trash, populate).
_PAUSED_AT_THE_NTH_DIRECTORY = "import itertools\n_made = itertools.count(1).__next__\n" + pause_at(
    'event == "os.chmod" and isinstance(args[0], int) and args[1] == 0o2770 '
    'and _made() == int(os.environ["SC_TEST_NTH"])')


def test_a_directory_another_member_is_making_is_never_refused(shared, python):
    # A directory of a group cache was made in place with the mode the maker's umask left, then
    # given the group's: with alice's umask 077 it was hers alone for a moment, and bob's use
    # and gc that came then failed with "Permission denied".  Alice is paused at that moment,
    # at each of the directories a first use makes in turn.
    source = shared / "data.bin"
    source.write_bytes(b"data\n")
    interpreter, env = python
    for nth in range(1, 6):
        base = shared / f"base{nth}"
        base.mkdir()
        base.chmod(0o1777)
        group = ["--group", str(GROUP), "-d", str(base)]
        site, paused, go = shared / f"site{nth}", shared / f"paused{nth}", shared / f"go{nth}"
        site.mkdir()
        (site / "sitecustomize.py").write_text(_PAUSED_AT_THE_NTH_DIRECTORY)
        alice = subprocess.Popen([interpreter, "-m", "sharedcache", "--use", "--keep", *group, "-n", "alices",
                                  f"file:{source}"],
                                 env={**env, "PYTHONPATH": f"{site}:{env['PYTHONPATH']}", "SC_TEST_NTH": str(nth),
                                      "SC_TEST_PAUSED": str(paused), "SC_TEST_GO": str(go)},
                                 user=ALICE, group=GROUP, extra_groups=[GROUP], umask=0o077,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            for _ in range(3000):
                if paused.exists() or alice.poll() is not None:
                    break
                select.select([], [], [], 0.01)
            assert paused.exists(), f"alice never made directory {nth}"
            used = as_user(python, BOB, "--use", "--keep", *group, "-n", "bobs", f"file:{source}")
            collected = as_user(python, BOB, "gc", *group)
        finally:
            go.touch()
            out, err = alice.communicate(timeout=60)
        assert used.returncode == 0 and used.stderr == "", (nth, used.stderr)
        assert collected.returncode == 0 and collected.stderr == "", (nth, collected.stderr)
        assert alice.returncode == 0 and err == "", (nth, err)
        assert out.strip() == str(base / f".shared-cache-{ALICE}" / "alices")
        root = base / f".shared-cache-g{GROUP}"
        for directory in (root, *(root / sub for sub in ("objects", "stage", "trash", "populate"))):
            status = directory.stat()
            assert status.st_gid == GROUP and stat.S_IMODE(status.st_mode) == 0o2770, (nth, directory)
        # What lost the race to make a directory left nothing under a temporary name.
        assert not [p for p in (*base.iterdir(), *root.iterdir(), *(root / "populate").iterdir())
                    if ".tmp-" in p.name], nth
        listed = as_user(python, ALICE, "list", *group)
        assert {"alices", "bobs"} <= set(listed.stdout.split()), listed.stdout


def test_temporary_names_left_in_a_group_cache_are_removed_by_gc(shared, python):
    # What is made under a temporary name and then linked or renamed into place (the lock file
    # stage.lock, the directories of the cache) stays under that name when its maker ends in
    # between.  gc removed those of population lock files only: it removes them all once old,
    # whoever made them, and leaves fresh ones (being made now) alone.
    import time

    source, base, group = file_in_a_group_cache(shared)
    made = as_user(python, ALICE, "--use", "--keep", *group, "-n", "first", f"file:{source}")
    assert made.returncode == 0, made.stderr
    root = base / f".shared-cache-g{GROUP}"
    old = [root / ".stage.lock.tmp-0123456789abcdef01234567", root / ".objects.tmp-0123456789abcdef01234567",
           root / "populate" / ".first.work.tmp-0123456789abcdef01234567",
           base / f"..shared-cache-g{GROUP}.tmp-0123456789abcdef01234567"]
    fresh = [root / ".stage.lock.tmp-fresh", root / ".trash.tmp-fresh"]
    long_ago = time.time() - 2 * 3600
    for path in old + fresh:
        if "lock" in path.name:
            path.touch(mode=0o660)
        else:
            path.mkdir(mode=0o2770)
        os.chown(path, ALICE, GROUP)
        if path in old:
            os.utime(path, (long_ago, long_ago))
    collected = as_user(python, ALICE, "gc", *group)
    assert collected.returncode == 0 and collected.stderr == "", collected.stderr
    assert not [path for path in old if os.path.lexists(path)]
    assert all(path.exists() for path in fresh)


def test_a_signed_urls_token_is_kept_from_the_other_members(shared, origin, python):
    # A URL's query may be a credential (a presigned URL's signature, a token): it was stored in
    # files every member may read (the repository's identity, in its metadata, the index and the
    # population's status; the error recorded for the waiters), so bob could read alice's token.
    import json

    from sharedcache.loaders import words as recipe_words

    url = origin.add("/data.bin", b"data\n" * 100)
    signed = f"http:{url}?X-Amz-Signature=SECRETSIGNATURE&token=SECRETTOKEN"
    base = shared / "base"
    base.mkdir()
    base.chmod(0o1777)
    group = ["--group", str(GROUP), "-d", str(base)]
    with Sleeper() as job:
        owned = ["--pid", str(job.pid)]
        first = as_user(python, ALICE, "--use", *group, *owned, signed)
        assert first.returncode == 0, first.stderr
        again = as_user(python, ALICE, "--use", *group, *owned, signed)
        assert again.returncode == 0 and again.stdout == first.stdout, again.stderr
        assert origin.stats("/data.bin").gets == 1, "the same signed URL is the same repository"
        other = as_user(python, ALICE, "--use", *group, *owned, f"http:{url}?token=ANOTHERTOKEN")
        assert other.returncode == 0 and other.stdout != first.stdout, "another query, another repository"
        missing = as_user(python, ALICE, "--use", *group, *owned, "-n", "missing",
                          f"http:{origin.url('/missing.bin')}?token=SECRETMISSING")
        assert missing.returncode == 1 and "SECRETMISSING" in missing.stderr  # her own line says it all
        readable = [path for path in (base / f".shared-cache-g{GROUP}").rglob("*")
                    if path.is_file() and path.stat().st_mode & 0o040]
        assert readable
        for path in readable:
            content = path.read_bytes()
            assert b"SECRET" not in content and b"ANOTHERTOKEN" not in content, path
        record = json.loads((base / f".shared-cache-g{GROUP}" / "populate" / "missing.error").read_text())
        assert record["message"].endswith(f"{origin.url('/missing.bin')}?…"), record

        # A repository made before, whose identity holds the query itself, is still this recipe's.
        earlier = recipe_words.earlier_identities(signed)[-1]
        assert "SECRETTOKEN" in earlier
        interpreter, env = python
        store = ("import sys; from sharedcache.engine.fscache import FsCache\n"
                 "with FsCache(sys.argv[1], group=int(sys.argv[2])).store('made-before', meta=sys.argv[3]) as data:\n"
                 "    (data / 'data.bin').write_bytes(b'before')\n")
        stored = subprocess.run([interpreter, "-c", store, str(base / f".shared-cache-g{GROUP}"), str(GROUP), earlier],
                                capture_output=True, text=True, timeout=60, env=env, user=ALICE, group=GROUP,
                                extra_groups=[GROUP])
        assert stored.returncode == 0, stored.stderr
        gets = origin.stats("/data.bin").gets
        held = as_user(python, ALICE, "--use", *group, *owned, "-n", "made-before", signed)
        assert held.returncode == 0, held.stderr
        assert origin.stats("/data.bin").gets == gets, "held as it was, not downloaded again"


def test_a_long_signed_url_a_redirect_led_to_is_kept_from_the_other_members(shared, origin, python):
    # A URL that redirects to a presigned URL that has expired (403): the message shows that URL,
    # longer than a quotation, by its two ends, and its query's end (the signature) came after the
    # ellipsis, with no "?" left before it to say where the query began: it was in the failure
    # recorded for the waiters, which every member reads.
    path = "/bucket/" + "/".join(f"directory-{n:02d}" for n in range(12)) + "/data.bin"
    query = "X-Amz-Credential=SECRETCREDENTIAL&X-Amz-Expires=3600&X-Amz-Signature=" + "5ec1e7" * 20
    presigned = origin.url(path) + "?" + query
    assert len(presigned.partition("?")[0]) > 80 and len(query) > 80  # the "?" is where the quotation leaves out
    origin.fault(path, status=403)
    url = origin.redirect("/presign/data.bin", presigned)
    base = shared / "base"
    base.mkdir()
    base.chmod(0o1777)
    group = ["--group", str(GROUP), "-d", str(base)]
    refused = as_user(python, ALICE, "--use", *group, "-n", "data", f"http:{url}")
    assert refused.returncode == 1 and "HTTP 403" in refused.stderr, refused.stderr
    assert "5ec1e7" in refused.stderr  # her own line shows the URL by its ends
    message, listed = read_by_another_member(python, base, "data")
    assert "redirected to 'http://127.0.0.1:" in message and "directory-00" in message, message
    assert "HTTP 403" in listed, listed
    for shown in (message, listed):
        assert "5ec1e7" not in shown and "SECRET" not in shown and "X-Amz" not in shown, shown


def read_by_another_member(python, base: Path, name: str) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    """What bob reads of alice's failed population of ``name`` in the group cache under ``base``:
    the message of its failure record, and ``sc list --json --group`` (its output and errors)."""
    import json

    record = base / f".shared-cache-g{GROUP}" / "populate" / f"{name}.error"
    interpreter, env = python
    read = subprocess.run([interpreter, "-c", "import sys; print(open(sys.argv[1]).read())", str(record)],
                          capture_output=True, text=True, timeout=60, env=env, user=BOB, group=GROUP)
    assert read.returncode == 0, read.stderr
    listed = as_user(python, BOB, "list", "--json", "--group", str(GROUP), "-d", str(base))
    assert listed.returncode == 0, listed.stderr
    return json.loads(read.stdout)["message"], listed.stdout + listed.stderr


@pytest.mark.parametrize(("location", "status"), [
    # The URL ended at the quote for the members, and what followed it showed.
    ("{origin}/mirror/it's/data.bin?X-Amz-Signature=SECRETSIGNATURE", 302),
    ('{origin}/mirror/say-"yes"/data.bin?X-Amz-Signature=SECRETSIGNATURE', 302),
    # So it did at a space, in a redirect's target shown unquoted.
    ("{origin}/mirror/a b/data.bin?X-Amz-Signature=SECRETSIGNATURE", 302),
    # A Location refused, quoted in the message, is no http:// or https:// URL: nothing was hidden.
    ("ftp://mirror.example/data.bin?token=SECRETTOKEN", 302),
    ("//mirror.example:port/data.bin?token=SECRETTOKEN", 302),  # relative, with no port
    ("/mirror/data.bin?token=SECRETTOKEN", 300),  # not followed, its Location said
], ids=["apostrophe", "double-quote", "space", "ftp", "relative-without-port", "not-followed"])
def test_the_query_of_a_location_a_download_failed_at_is_kept_from_the_other_members(shared, origin, python,
                                                                                       location, status):
    url = origin.redirect("/presign/data.bin", location.format(origin=origin.url("")), status=status)
    base = shared / "base"
    base.mkdir()
    base.chmod(0o1777)
    group = ["--group", str(GROUP), "-d", str(base)]
    refused = as_user(python, ALICE, "--use", *group, "-n", "data", f"http:{url}")
    assert refused.returncode == 1 and "SECRET" in refused.stderr, refused.stderr  # her own line says it all
    message, listed = read_by_another_member(python, base, "data")
    assert "/presign/data.bin" in message and "?…" in message, message
    assert "SECRET" not in message and "SECRET" not in listed, (message, listed)


@pytest.mark.parametrize(("status", "headers"), [
    (403, {}),
    # A lone quote in the phrase paired with the quote that opens the Location, whose query showed.
    (300, {"Location": "/mirror/data.bin?X-Amz-Signature=SECRETSIGNATURE"}),
], ids=["refused", "not-followed"])
def test_the_reason_phrase_of_a_failed_download_is_kept_from_the_other_members(shared, origin, python,
                                                                                status, headers):
    # The reason phrase of a status line is the server's to write, as an error answer's body is:
    # it may repeat the token it was sent.
    origin.fault("/data.bin", status=status, headers=headers, reason="token ' SECRETREASON expired")
    base = shared / "base"
    base.mkdir()
    base.chmod(0o1777)
    group = ["--group", str(GROUP), "-d", str(base)]
    refused = as_user(python, ALICE, "--use", *group, "-n", "data", f"http:{origin.url('/data.bin')}?token=SECRETTOKEN")
    assert refused.returncode == 1 and "SECRETREASON" in refused.stderr, refused.stderr  # her own line says it all
    message, listed = read_by_another_member(python, base, "data")
    assert "SECRET" not in message and "SECRET" not in listed, (message, listed)
    assert f"HTTP {status} (the server says …) for " in message, message
