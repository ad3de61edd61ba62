"""Hostile or broken ground under the cache: locks that do not lock, directories planted by
someone else, corrupted metadata, and a file system that fills up."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from scutil import SOUND_LOOKING_DAMAGE, Sleeper, check_tree, damage_in_values, control, make_tarball, mounted_tmpfs, sample_files, sc, sc_env, user_dir

FILES = sample_files(n=6, size=10_000)


@pytest.fixture
def words(tmp_path: Path) -> list[str]:
    tarball = tmp_path / "data.tar.gz"
    md5 = make_tarball(tarball, FILES)
    return [f"file:{tarball}", f"md5:{md5}", "tar"]


#: For a test that gives a directory to another user.
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root, to give a directory to another user")


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


@pytest.fixture(scope="module")
def lying_flock(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A shared library whose flock() claims success and locks nothing, as on a network file
    system without lock support; preloaded into sc, it stands in for such a file system."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler to build the lying flock")
    out = tmp_path_factory.mktemp("shim")
    (out / "flock.c").write_text("int flock(int fd, int operation) { (void)fd; (void)operation; return 0; }\n")
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(out / "flock.so"), str(out / "flock.c")], check=True)
    return out / "flock.so"


def test_locks_that_do_not_lock_are_detected(base, words, lying_flock):
    env = sc_env(LD_PRELOAD=str(lying_flock))
    result = sc("--use", "-n", "repo", "-d", str(base), *words, env=env)
    assert result.returncode == 1
    assert "locks do not work" in one_line(result.stderr)
    assert not (user_dir(base) / "repo").exists()
    assert not (control(base) / "cache.info").exists(), "nothing records the directory as fine"
    # The same directory with working locks is fine, and gc checks again.
    with Sleeper() as owner:
        assert sc("--use", "-n", "repo", "-d", str(base), "--pid", str(owner.pid), *words).returncode == 0
    gc = sc("gc", "-d", str(base), env=env)
    assert gc.returncode == 1 and "locks do not work" in one_line(gc.stderr)


def squatted_and_mine(tmp_path: Path) -> tuple[Path, Path]:
    """Two bases: one where another user (uid 4321) made this user's directory first, and one free."""
    foreign, mine = tmp_path / "foreign", tmp_path / "mine"
    foreign.mkdir()
    mine.mkdir()
    user_dir(foreign).mkdir(mode=0o700)
    os.chown(user_dir(foreign), 4321, 4321)
    return foreign, mine


@needs_root
def test_user_directory_squatted_by_another_user_is_skipped_with_one_line(tmp_path, words):
    foreign, mine = squatted_and_mine(tmp_path)
    with Sleeper() as owner:
        result = sc("--use", "-n", "repo", "-d", f"{foreign}:{mine}", "--pid", str(owner.pid), *words)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == str(user_dir(mine) / "repo")
        assert "belongs to uid 4321" in one_line(result.stderr)
    alone = sc("--use", "-n", "repo2", "-d", str(foreign), *words)
    assert alone.returncode == 1
    assert "belongs to uid 4321" in one_line(alone.stderr)
    assert list(user_dir(foreign).iterdir()) == [], "nothing was written into it"


@needs_root
@pytest.mark.parametrize("command", [["gc"], ["list"], ["list", "--json"]], ids=" ".join)
def test_a_squatted_base_that_d_names_fails_gc_and_list_and_one_of_a_setting_does_not(tmp_path, words, command):
    # gc and list skipped a base that -d named and that they could not look into (another
    # user's directory there), said so, and exited 0: a script or a cron job could not tell.
    foreign, mine = squatted_and_mine(tmp_path)
    with Sleeper() as owner:
        assert sc("--use", "-n", "repo", "-d", str(mine), "--pid", str(owner.pid), *words).returncode == 0
    # The other base, looked into all the same: gc's report of it, or list's row of its repository.
    other = f"{mine}: " if command == ["gc"] else str(user_dir(mine) / "repo")
    both = f"{foreign}:{mine}"
    named = sc(*command, "-d", both)
    assert named.returncode == 1, named.stderr
    assert one_line(named.stderr).startswith(f"sc: skipping {foreign}: ") and "belongs to uid 4321" in named.stderr
    assert other in named.stdout, named.stdout
    quiet = sc("-q", *command, "-d", both)
    assert quiet.returncode == 1 and quiet.stdout == ("" if command == ["gc"] else named.stdout), quiet.stdout
    assert one_line(quiet.stderr).startswith(f"sc: error: skipping {foreign}: "), quiet.stderr
    # The bases of a setting, as the defaults, are every command's candidates, which another
    # user may squat: skipping one is said, and fails nothing.
    unnamed = sc(*command, env=sc_env(SC_DIRECTORIES=both))
    assert unnamed.returncode == 0 and "belongs to uid 4321" in one_line(unnamed.stderr), unnamed.stderr
    assert other in unnamed.stdout, unnamed.stdout


def test_symlinked_user_directory_is_refused(tmp_path, base, words):
    # The link leads to a directory of this user's that the other checks would take (0700, its
    # own): only the refusal to follow a link stops it.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    user_dir(base).symlink_to(elsewhere)
    result = sc("--use", "-n", "repo", "-d", str(base), *words)
    assert result.returncode == 1
    assert one_line(result.stderr) == (f"sc: error: repository 'repo': no usable candidate directory: {base} "
                                       f"({user_dir(base)} is not a directory (a symlink or a file); refusing to use it)")
    assert list(elsewhere.iterdir()) == []


def _skipped_for(squatted: Path, words: list[str], tmp_path: Path) -> str:
    """The one line with which ``sc --use`` skips the base ``squatted`` for the next candidate,
    after checking that it used that next one and wrote nothing into ``squatted``."""
    mine = tmp_path / "mine"
    mine.mkdir()
    before = sorted(squatted.rglob("*"))
    with Sleeper() as owner:
        result = sc("--use", "-n", "repo", "-d", f"{squatted}:{mine}", "--pid", str(owner.pid), *words)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == str(user_dir(mine) / "repo")
    assert sorted(squatted.rglob("*")) == before, "nothing was written into it"
    return one_line(result.stderr)


def test_user_directory_open_to_others_is_skipped_with_one_line(tmp_path, base, words):
    user_dir(base).mkdir()
    os.chmod(user_dir(base), 0o777)
    assert f"{user_dir(base)} is open to other users (mode 777); refusing to use it" in _skipped_for(
        base, words, tmp_path)


def test_base_writable_by_every_user_without_its_sticky_bit_is_skipped_with_one_line(tmp_path, base, words):
    os.chmod(base, 0o757)  # (group-writable is refused for another reason: --group)
    assert f"{base} is writable by every user and not sticky; refusing to use it" in _skipped_for(
        base, words, tmp_path)


def test_planted_symlink_inside_the_control_directory_is_not_followed(tmp_path, base, words):
    with Sleeper() as owner:
        assert sc("--use", "-n", "first", "-d", str(base), "--pid", str(owner.pid), *words).returncode == 0
    target = tmp_path / "victim"
    target.write_text("precious")
    (control(base) / "populate" / "repo.lock").symlink_to(target)
    result = sc("--use", "-n", "repo", "-d", str(base), *words)
    assert result.returncode == 1
    assert (f"{control(base) / 'populate' / 'repo.lock'} is not a regular file (a planted symlink, FIFO, socket or "
            "directory?); refusing to use it") in one_line(result.stderr)
    assert target.read_text() == "precious"
    assert sc("gc", "-d", str(base)).returncode == 0
    assert target.read_text() == "precious"
    with Sleeper() as owner:
        assert sc("--use", "-n", "repo", "-d", str(base), "--pid", str(owner.pid), *words).returncode == 0


@pytest.mark.parametrize("plant", ["fifo", "socket", "directory"])
def test_what_is_planted_at_a_population_lock_is_refused_by_its_path_and_gc_removes_it(base, words, plant):
    with Sleeper() as owner:
        assert sc("--use", "-n", "first", "-d", str(base), "--pid", str(owner.pid), *words).returncode == 0
    lock = control(base) / "populate" / "repo.lock"
    if plant == "fifo":
        os.mkfifo(lock)
    elif plant == "socket":  # (which open() refuses with ENXIO: it escaped as a bare error)
        bound(lock)
    else:
        lock.mkdir()
        (lock / "inside").write_text("x")
    result = sc("--use", "-n", "repo", "-d", str(base), *words)
    assert result.returncode == 1
    assert f" {lock} is not a regular file" in one_line(result.stderr)  # (not the /proc/self/fd/N it was opened by)
    gc = sc("gc", "-d", str(base))
    assert gc.returncode == 0 and gc.stderr == ""
    assert not os.path.lexists(lock)
    with Sleeper() as owner:
        used = sc("--use", "-n", "repo", "-d", str(base), "--pid", str(owner.pid), *words)
        assert used.returncode == 0, used.stderr
        check_tree(Path(used.stdout.strip()), FILES)


def bound(path: Path) -> None:
    """A UNIX socket at ``path``, as a process that listens there makes it (the socket itself is
    closed: the file stays)."""
    import socket
    import tempfile

    short = tempfile.mkdtemp(dir="/tmp")  # (a socket's path is at most 107 bytes: made there, then moved)
    with socket.socket(socket.AF_UNIX) as listening:
        listening.bind(f"{short}/s")
    os.rename(f"{short}/s", path)
    os.rmdir(short)


@pytest.mark.parametrize("plant", ["fifo", "socket", "held"])
def test_what_is_at_the_waiters_file_of_one_base_fails_no_use_ready_in_the_next(tmp_path, words, plant):
    # The first base looked at for a population under way took its waiters' file, waiting, and
    # refused a FIFO there: a use of a repository ready in the next base failed, or waited out
    # its whole --timeout for whoever held the file.
    first, second = tmp_path / "b1", tmp_path / "b2"
    first.mkdir()
    second.mkdir()
    with Sleeper() as owner:
        for base, name in ((first, "other"), (second, "repo")):
            assert sc("--use", "-n", name, "-d", str(base), "--pid", str(owner.pid), *words).returncode == 0
        waiting = control(first) / "populate" / "repo.waiting"
        holder = None
        if plant == "fifo":
            os.mkfifo(waiting)
        elif plant == "socket":
            bound(waiting)
        else:
            holder = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys, time\n"
                                       "fd = os.open(sys.argv[1], os.O_RDONLY | os.O_CREAT, 0o600)\n"
                                       "fcntl.flock(fd, fcntl.LOCK_EX); print(flush=True); time.sleep(60)",
                                       str(waiting)], stdout=subprocess.PIPE, text=True)
            assert holder.stdout is not None and holder.stdout.readline() == "\n"
        try:
            used = sc("--use", "-n", "repo", "-d", f"{first}:{second}", "--timeout", "20", "--pid", str(owner.pid),
                      *words)
        finally:
            if holder is not None:
                holder.kill()
                holder.wait(10)
        assert (used.returncode, used.stderr) == (0, ""), used.stderr
        assert used.stdout == f"{user_dir(second)}/repo\n"


def test_a_waiters_file_that_is_the_population_lock_under_another_name_is_refused_and_gc_removes_it(
        base, words):
    # A hard link of the population lock planted at the waiters' file: the use held it shared,
    # then waited for its own lock for good, the population "by an unknown process".
    with Sleeper() as owner:
        assert sc("--use", "-n", "first", "-d", str(base), "--pid", str(owner.pid), *words).returncode == 0
    populate = control(base) / "populate"
    (populate / "repo.lock").touch(mode=0o600)
    os.link(populate / "repo.lock", populate / "repo.waiting")
    refused = sc("--use", "-n", "repo", "-d", str(base), "--timeout", "20", *words)
    assert refused.returncode == 1, refused.stderr
    assert f" {populate / 'repo.waiting'} is the population lock's file under another name" in one_line(refused.stderr)
    gc = sc("gc", "-d", str(base))
    assert gc.returncode == 0 and gc.stderr == "", gc.stderr
    assert not os.path.lexists(populate / "repo.waiting")
    with Sleeper() as owner:
        used = sc("--use", "-n", "repo", "-d", str(base), "--pid", str(owner.pid), *words)
        assert used.returncode == 0, used.stderr
        check_tree(Path(used.stdout.strip()), FILES)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "directory", "misplaced-total"])
def test_corrupt_index_gives_a_clear_error_and_gc_repairs_it(base, words, damage):
    """"misplaced-total": damage that SQLite's quick_check does not see; the failed release had
    moved the repository into the trash, and gc failed with the line saying to run gc."""
    with Sleeper() as owner:
        args = ["-n", "repo", "-d", str(base), "--pid", str(owner.pid), *words]
        assert sc("--use", *args).returncode == 0
        index = control(base) / "index.sqlite"
        for suffix in ("-wal", "-shm"):
            Path(f"{index}{suffix}").unlink(missing_ok=True)
        if damage == "garbage":
            index.write_bytes(b"this is not a database" * 100)
        elif damage == "truncated":
            index.write_bytes(index.read_bytes()[:700])
        elif damage in SOUND_LOOKING_DAMAGE:
            damage_in_values(index, damage)
        else:
            index.unlink()
            index.mkdir()
        # A ready repository is used without the index: the data itself is intact.
        warm = sc("--use", *args)
        assert warm.returncode == 0, warm.stderr
        check_tree(Path(warm.stdout.strip()), FILES)
        # Nor does the release of a use that leaves another (the job holds two).
        released = sc("--unuse", *args)
        assert released.returncode == 0, released.stderr
        # What needs the index (the accounting of the last use's release) fails clearly, whole.
        broken = sc("--unuse", *args)
        assert broken.returncode == 1 and "gc" in one_line(broken.stderr)
        assert os.listdir(control(base) / "trash") == [], "a failed release leaves the repository"
        gc = sc("gc", "-d", str(base))
        assert gc.returncode == 0, gc.stderr
        listed = json.loads(sc("list", "--json", "-d", str(base)).stdout)
        assert [row["users"] for row in listed] == [[owner.pid]], listed
        fixed = sc("--use", *args)
        assert fixed.returncode == 0, fixed.stderr
        check_tree(Path(fixed.stdout.strip()), FILES)
        assert sc("--unuse", *args).returncode == 0


@pytest.mark.parametrize("damage", ["total-text", "meta-not-utf8"])
def test_values_damaged_in_the_index_give_a_clear_error_and_gc_repairs_them(base, words, damage):
    """A 'total' that is no number ended a download with --max-size and gc in "internal error
    (ValueError ...)"; a row's meta that is no UTF-8 failed `sc list` for good, gc finding nothing
    to do."""
    with Sleeper() as owner:
        args = ["-d", str(base), "--pid", str(owner.pid), "--keep", *words]
        assert sc("--use", "-n", "repo", *args).returncode == 0
        assert sc("--unuse", "-n", "repo", *args).returncode == 0
        damage_in_values(control(base) / "index.sqlite", damage)
        failed = sc("--use", "-n", "other", "--max-size", "1GB", *args) if damage == "total-text" \
            else sc("list", "-d", str(base))
        assert failed.returncode == 1 and "unusable" in one_line(failed.stderr)
        gc = sc("gc", "-d", str(base))
        assert gc.returncode == 0 and "index rebuilt" in gc.stdout, (gc.stdout, gc.stderr)
        used = sc("--use", "-n", "other", "--max-size", "1GB", *args)
        assert used.returncode == 0, used.stderr
        listed = json.loads(sc("list", "--json", "-d", str(base)).stdout)
        assert sorted(row["name"] for row in listed) == ["other", "repo"]
        assert "nothing to do" in sc("gc", "-d", str(base)).stdout


@pytest.mark.parametrize("damage", ["garbage", "misplaced-total"])
def test_a_damaged_index_fails_a_new_use_before_its_download(base, words, origin, damage):
    """A damaged index failed a new use only at its commit, once everything was downloaded and
    unpacked: each job of a batch downloaded for nothing."""
    payload = os.urandom(2_000_000)
    origin.add("/big.bin", payload)
    with Sleeper() as owner:
        args = ["-d", str(base), "--pid", str(owner.pid)]
        assert sc("--use", "-n", "first", *args, *words).returncode == 0
        index = control(base) / "index.sqlite"
        if damage == "garbage":
            index.write_bytes(b"garbage" * 1000)
        else:
            damage_in_values(index, damage)
        failed = sc("--use", "-n", "new", *args, f"http:{origin.url('/big.bin')}")
        assert failed.returncode == 1 and "run gc to rebuild it" in one_line(failed.stderr), failed.stderr
        assert origin.stats("/big.bin").bytes_served == 0
        # A use of ready data does not open the index, and gc repairs it for the next download.
        assert sc("--use", "-n", "first", *args, *words).returncode == 0
        assert sc("gc", "-d", str(base)).returncode == 0
        used = sc("--use", "-n", "new", *args, f"http:{origin.url('/big.bin')}")
        assert used.returncode == 0, used.stderr
        assert origin.stats("/big.bin").bytes_served == len(payload)


def test_a_damaged_budget_fails_no_download_and_gc_removes_it(base, words):
    """A garbled budget failed a plain new use (no --keep, no --max-size) once its download and
    unpack were done, recording the failure for its waiters, and gc failed with the same line."""
    with Sleeper() as owner:
        args = ["-d", str(base), "--pid", str(owner.pid), *words]
        assert sc("--use", "-n", "kept", "--keep", "--max-size", "1MB", *args).returncode == 0
        budget = control(base) / "budget"
        budget.write_bytes(b"1O00000")
        used = sc("--use", "-n", "new", *args)
        assert used.returncode == 0, used.stderr
        assert "damaged" in one_line(used.stderr) and "'new' is committed without a budget" in used.stderr
        check_tree(Path(used.stdout.strip()), FILES)
        # Nor is a release: sc run exited 1 once its command had succeeded, and --unuse failed.
        ran = sc("run", "-n", "briefly", "-d", str(base), *words, "--", "true")
        assert ran.returncode == 0 and "the release restores none" in ran.stderr, ran.stderr
        unused = sc("--unuse", "-n", "kept", *args)
        assert unused.returncode == 0 and "the release restores none" in one_line(unused.stderr), unused.stderr
        assert sc("--use", "-n", "kept", *args).returncode == 0
        gc = sc("gc", "-d", str(base))
        assert gc.returncode == 0 and "damaged budget removed" in gc.stdout, (gc.stdout, gc.stderr)
        assert not os.path.lexists(budget)
        assert sc("gc", "-d", str(base)).stdout.endswith("nothing to do\n")
        listed = json.loads(sc("list", "--json", "-d", str(base)).stdout)
        assert sorted((row["name"], row["state"]) for row in listed) == [("kept", "ready"), ("new", "ready")]


def test_foreign_cache_marker_is_refused_clearly(base, words):
    user_dir(base).mkdir(mode=0o700)
    control(base).mkdir(mode=0o700)
    (control(base) / "cache.info").write_text("something else entirely\n")
    result = sc("--use", "-n", "repo", "-d", str(base), *words)
    assert result.returncode == 1 and "not a shared-cache cache" in one_line(result.stderr)


@pytest.fixture
def small_fs(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A 3 MiB tmpfs mounted for the test (needs root; skipped elsewhere)."""
    with mounted_tmpfs(tmp_path / "small", "3m") as mount:
        yield mount


def test_full_file_system_fails_clearly_and_kept_data_makes_room(tmp_path, small_fs):
    def blob(name: str, size: int) -> str:
        path = tmp_path / name
        path.write_bytes(os.urandom(size))
        return f"file:{path}"

    with Sleeper() as owner:
        common = ["-d", str(small_fs), "--pid", str(owner.pid)]
        kept = ["-n", "kept", "--keep", *common, blob("kept.bin", 1_600_000)]
        assert sc("--use", *kept).returncode == 0
        assert sc("--unuse", *kept).returncode == 0
        assert (user_dir(small_fs) / "kept").exists()
        # Does not fit beside the kept repository: that one is evicted and the population retried.
        result = sc("--use", "-n", "new", *common, blob("new.bin", 1_600_000))
        assert result.returncode == 0, result.stderr
        assert not (user_dir(small_fs) / "kept").exists()
        # Larger than the whole file system: a clear error, nothing left behind.
        huge = sc("--use", "-n", "huge", *common, blob("huge.bin", 4_000_000))
        assert huge.returncode == 1
        line = one_line(huge.stderr)
        assert "huge" in line and "space" in line
        assert list((control(small_fs) / "stage").iterdir()) == []
        assert not (user_dir(small_fs) / "huge").exists()
        listing = json.loads(sc("list", "--json", "-d", str(small_fs)).stdout)
        # Nothing of it is there: its one row is the failure, which says why.
        assert [(r["name"], r["state"]) for r in listing] == [("new", "ready"), ("huge", "failed")]
        assert listing[1]["path"] is None and listing[1]["size"] is None and "space" in listing[1]["error"]


def test_damaged_cache_marker_gives_a_clear_error_and_gc_repairs_it(base, words):
    with Sleeper() as owner:
        args = ["-n", "repo", "-d", str(base), "--pid", str(owner.pid), *words]
        assert sc("--use", *args).returncode == 0
        (control(base) / "cache.info").write_bytes(b"")
        broken = sc("--use", *args)
        assert broken.returncode == 1 and "run gc" in one_line(broken.stderr)
        assert sc("gc", "-d", str(base)).returncode == 0
        fixed = sc("--use", *args)
        assert fixed.returncode == 0, fixed.stderr
        check_tree(Path(fixed.stdout.strip()), FILES)


@pytest.mark.parametrize("sub", ["objects", "stage"])
def test_what_gc_cannot_move_into_the_trash_is_left_alone_in_one_line_and_gc_does_the_rest(base, words, sub):
    # A mount point in objects/ or stage/ (a member may mount on a directory of hers: FUSE),
    # which no rename moves, failed gc whole ("Device or resource busy: planted", then the same
    # with the path): a link planted at a population lock, which gc says it removes, stayed.
    made = sc("--use", "--keep", "-n", "repo", "-d", str(base), *words)
    assert made.returncode == 0, made.stderr
    planted, lock = control(base) / sub / "planted", control(base) / "populate" / "other.lock"
    lock.symlink_to("/etc/passwd")
    with mounted_tmpfs(planted, "1m"):
        gc = sc("gc", "-d", str(base))
    assert gc.returncode == 0, gc.stderr
    assert one_line(gc.stderr) == (f"sc: gc: {planted}: left alone: it cannot be moved into the trash "
                                   "(Device or resource busy)"), gc.stderr
    assert not os.path.lexists(lock)
    assert sc("--use", "-n", "repo", "-d", str(base), *words).returncode == 0


_VANISHING = """
import os, shutil, sys
objects = sys.argv[1]
while True:
    for n in range(8):
        os.makedirs(f"{objects}/p{n}/x", exist_ok=True)
    for n in range(8):
        shutil.rmtree(f"{objects}/p{n}", ignore_errors=True)
"""


def test_gc_passes_over_a_directory_removed_as_it_runs(base, words):
    # A directory that went between gc's listing of objects/ and its move into the trash (a
    # member of a group cache can make and remove hers in a loop) failed gc whole: "cannot move
    # .../objects/p3 into the trash: No such file or directory" (5 of 30 gcs here).
    made = sc("--use", "--keep", "-n", "repo", "-d", str(base), *words)
    assert made.returncode == 0, made.stderr
    racer = subprocess.Popen([sys.executable, "-c", _VANISHING, str(control(base) / "objects")])
    try:
        failed = [gc.stderr for gc in (sc("gc", "-d", str(base)) for _ in range(30)) if gc.returncode != 0]
    finally:
        racer.kill()
        racer.wait(10)
    assert failed == [], f"{len(failed)} of 30 failed: {failed[0]}"
    assert sc("--use", "-n", "repo", "-d", str(base), *words).returncode == 0


_LEASED = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR)
fcntl.fcntl(fd, 1024, fcntl.F_WRLCK)  # F_SETLEASE: told of every open of the file by another
print("leased", flush=True)
time.sleep(60)
"""


def test_a_lock_file_held_under_a_lease_is_refused_by_its_path_in_one_line(base, words):
    # The owner of a lock file (another member of a group cache) may take a lease on it: an open
    # that must not wait is then refused, and the use said "Resource temporarily unavailable"
    # of /proc/self/fd/N/lock, naming neither the file nor why.
    made = sc("--use", "--keep", "-n", "repo", "-d", str(base), *words)
    assert made.returncode == 0, made.stderr
    lock = control(base) / "objects" / "repo" / "lock"
    holder = subprocess.Popen([sys.executable, "-c", _LEASED, str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "leased\n"
        refused = sc("--use", "-n", "repo", "-d", str(base), *words)
    finally:
        holder.kill()
        holder.wait(10)
    assert refused.returncode == 1
    line = one_line(refused.stderr)
    assert f"{lock} is held under a file lease by another process" in line, line
    with Sleeper() as owner:
        used = sc("--use", "-n", "repo", "-d", str(base), "--pid", str(owner.pid), *words)
        assert used.returncode == 0, used.stderr
