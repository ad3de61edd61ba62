"""Hostile neighbours: other users of the host, played for real by users and a group that this
module creates (``schost<pid><letters>*``, new names at each run, so that two runs at once never
meet), in base directories like ``/tmp`` that everyone can write.

Each test asserts what the victim sees: her files outside the cache keep their names, contents
and modes; what she reads is the checksummed content, or her command fails with one clear line;
and every command returns within its bound.
"""

from __future__ import annotations

import contextlib
import grp
import hashlib
import json
import os
import pwd
import random
import shutil
import stat
import string
import subprocess
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from scutil import (Sleeper, check_tree, control, interpreter_for, make_tarball, pause_at, sample_files, sc,
                    sc_env)

from sharedcache.engine.leases import Owner, key_alive

FILES = sample_files(n=4, size=5_000)
USER_PREFIX = "schost"
# The comment of each user made here, before the owner key of the process that made them (its
# colons as spaces, which a comment may not hold): what tells the users of a killed run.
MADE_BY = "shared-cache test users of "
# The bound on any command here: nothing in these tests may make one wait for a lock or a FIFO.
BOUND = 30.0

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="creating and switching users needs root")


def user_names(tag: str) -> list[str]:
    """The victim's, the member's, the other's and the outsider's names."""
    return [f"{tag}{n}" for n in range(1, 5)]


def group_name(tag: str) -> str:
    return f"{tag}g"


class Users:
    """The test's users: ``victim`` (<tag>1), ``member`` (<tag>2, in the group with the victim),
    ``other`` (<tag>3, also in the group), ``outsider`` (<tag>4, in no group); ``gid`` is the
    group's (<tag>g)."""

    def __init__(self, tag: str) -> None:
        self.victim, self.member, self.other, self.outsider = (pwd.getpwnam(n).pw_uid for n in user_names(tag))
        self.gid = grp.getgrnam(group_name(tag)).gr_gid


def _admin(*command: str, check: bool) -> None:
    subprocess.run(command, check=check, capture_output=True, timeout=30)


def _delete_users(tag: str) -> None:
    # The group first: while it exists, so do its users, whose comment says whose they are.
    _admin("groupdel", group_name(tag), check=False)
    for name in user_names(tag):
        _admin("userdel", name, check=False)


def _delete_users_of_ended_runs() -> None:
    """The users (and group) of every run that ended without deleting them: killed midway."""
    ended = {entry.pw_name[:-1] for entry in pwd.getpwall()
             if entry.pw_name.startswith(USER_PREFIX) and entry.pw_gecos.startswith(MADE_BY)
             and not key_alive(entry.pw_gecos.removeprefix(MADE_BY).replace(" ", ":"))}
    for tag in ended:
        _delete_users(tag)


@pytest.fixture(scope="module")
def users() -> Iterator[Users]:
    if any(shutil.which(tool) is None for tool in ("useradd", "usermod", "groupadd")):
        pytest.skip("useradd/usermod/groupadd are not installed: cannot create the test users")
    _delete_users_of_ended_runs()
    tag = f"{USER_PREFIX}{os.getpid()}{''.join(random.choices(string.ascii_lowercase, k=4))}"
    comment = MADE_BY + Owner.current().key.replace(":", " ")
    names = user_names(tag)
    try:
        # The users before their group, so that a group is never left without users to tell whose it is.
        for name in names:
            _admin("useradd", "-M", "-N", "-s", "/bin/sh", "-c", comment, name, check=True)
        _admin("groupadd", group_name(tag), check=True)
        for name in names[:3]:  # (the outsider is in no group)
            _admin("usermod", "-a", "-G", group_name(tag), name, check=True)
        yield Users(tag)
    finally:
        _delete_users(tag)


@pytest.fixture(scope="module")
def python(users: Users) -> tuple[str, dict[str, str]]:
    return interpreter_for(users.victim, users.gid)


@pytest.fixture
def shared(reachable_tmp: Path) -> Path:
    """A directory that every test user can enter, holding this test's bases."""
    return reachable_tmp


def tmp_like(path: Path) -> Path:
    path.mkdir()
    path.chmod(0o1777)
    return path


def group_cache(shared: Path, users: Users) -> tuple[Path, list[str], Path]:
    """A fresh base like /tmp, the option that names the group, and the group cache's directory
    in that base."""
    base = tmp_like(shared / "tmp")
    return base, ["--group", str(users.gid)], base / f".shared-cache-g{users.gid}"


@pytest.fixture
def recipe(shared: Path) -> list[str]:
    tarball = shared / "data.tar.gz"
    md5 = make_tarball(tarball, FILES)
    tarball.chmod(0o644)
    return [f"file:{tarball}", f"md5:{md5}", "tar"]


@pytest.fixture
def home(shared: Path, users: Users) -> Path:
    """The victim's private files, outside every cache: what no neighbour may touch through her."""
    path = shared / "victim-home"
    (path / ".ssh").mkdir(parents=True)
    (path / ".ssh" / "id_ed25519").write_bytes(b"-----BEGIN OPENSSH PRIVATE KEY-----\n")
    (path / ".ssh" / "id_ed25519").chmod(0o600)
    (path / "notes.txt").write_text("mine\n")
    (path / ".ssh").chmod(0o700)
    for item in [path, *path.rglob("*")]:
        os.chown(item, users.victim, users.victim)
    path.chmod(0o755)  # enterable, as homes often are: a link into it must lead somewhere
    return path


def snapshot(path: Path) -> dict[str, tuple[int, int, bytes | None]]:
    """Names, owners, modes and contents of everything below ``path``."""
    found = {}
    for item in [path, *path.rglob("*")]:
        st = item.lstat()
        data = item.read_bytes() if stat.S_ISREG(st.st_mode) else None
        found[str(item.relative_to(path))] = (st.st_uid, stat.S_IMODE(st.st_mode), data)
    return found


def run_as(python: tuple[str, dict[str, str]], uid: int, *args: str, gid: int | None = None,
           groups: tuple[int, ...] = (), umask: int = 0o022,
           variables: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``sc ARGS`` as user ``uid`` (with the environment's ``variables`` set too); it must return
    within BOUND."""
    interpreter, env = python
    return subprocess.run([interpreter, "-m", "sharedcache", *args], capture_output=True, text=True,
                          timeout=BOUND, env={**env, **(variables or {})}, user=uid,
                          group=uid if gid is None else gid, extra_groups=list(groups), umask=umask, cwd="/")


def code_as(python: tuple[str, dict[str, str]], uid: int, code: str, *args: str,
            groups: tuple[int, ...] = ()) -> subprocess.Popen[str]:
    """Start Python ``code`` as user ``uid`` (the other user acting)."""
    interpreter, env = python
    return subprocess.Popen([interpreter, "-c", code, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, user=uid, group=uid,
                            extra_groups=list(groups), cwd="/")


def done(proc: subprocess.Popen[str], timeout: float = BOUND) -> str:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    return out


def clean_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    """stderr's lines: each one 'sc: ...', never a traceback."""
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr and all(line.startswith("sc: ") for line in lines), result.stderr
    return lines


def used_and_released(python: tuple[str, dict[str, str]], users: Users,
                      args: list[str]) -> subprocess.CompletedProcess[str]:
    """The victim's use of ``args`` (the recipe of :data:`FILES`), checked, and its release: the
    use's result."""
    used = run_as(python, users.victim, "--use", *args, groups=(users.gid,))
    assert used.returncode == 0, used.stderr
    check_tree(Path(used.stdout.strip()), FILES)
    released = run_as(python, users.victim, "--unuse", *args, groups=(users.gid,))
    assert released.returncode == 0, released.stderr
    return used


def user_dir(base: Path, uid: int) -> Path:
    return base / f".shared-cache-{uid}"


# -- every user of the host can use the shared bases --------------------------------------------


def test_three_users_share_tmp_like_bases_and_a_squatted_directory_means_the_next_one(
    shared, users, python, recipe
):
    tmp, var_tmp = tmp_like(shared / "tmp"), tmp_like(shared / "var-tmp")
    bases = ["-d", f"{tmp}:{var_tmp}"]
    # The member squats the third user's directory in the first base, before that user comes.
    done(code_as(python, users.member, "import os, sys; os.mkdir(sys.argv[1], 0o777)",
                 str(user_dir(tmp, users.other))))
    # A cache of shared-cache 0.2 in the base is nobody's business but its owner's.
    old = tmp / ".shared-cache"
    old.mkdir(mode=0o700)
    (old / "cache.info").write_text("shared-cache fscache 2\n")
    os.chown(old, users.victim, users.victim)
    before = snapshot(old)
    with Sleeper() as job:
        paths = {}
        for uid in (users.victim, users.member, users.other):
            result = run_as(python, uid, "--use", "-n", "repo", "--pid", str(job.pid), *bases, *recipe)
            assert result.returncode == 0, result.stderr
            paths[uid] = Path(result.stdout.strip())
            lines = clean_lines(result)
            if uid == users.other:
                assert len(lines) == 1 and str(tmp) in lines[0] and f"belongs to uid {users.member}" in lines[0]
            else:
                assert lines == []
        assert paths[users.victim] == user_dir(tmp, users.victim) / "repo"
        assert paths[users.member] == user_dir(tmp, users.member) / "repo"
        assert paths[users.other] == user_dir(var_tmp, users.other) / "repo", "fell back to the next base"
        for uid, path in paths.items():
            assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700 and path.parent.stat().st_uid == uid
            check_tree(path, FILES)
        # Every command of the squatted user skips that base the same way, with one line; list
        # and gc, asked by -d to look there, fail for it.
        common = ["-n", "repo", "--pid", str(job.pid), *bases, *recipe]
        for command in (["--location", *common], ["list", *bases], ["gc", *bases], ["--unuse", *common]):
            result = run_as(python, users.other, *command)
            assert result.returncode == (1 if command[0] in ("list", "gc") else 0), (command, result.stderr)
            lines = clean_lines(result)
            assert len(lines) == 1 and f"belongs to uid {users.member}" in lines[0], (command, lines)
    assert os.listdir(user_dir(tmp, users.other)) == [], "nothing was written into the squatted directory"
    assert snapshot(old) == before, "the old cache was left alone"


def test_a_base_that_another_user_owns_is_refused(shared, users, python, recipe):
    base = shared / "sc"
    base.mkdir()
    os.chown(base, users.member, users.member)  # made first by another user: /tmp/sc
    result = run_as(python, users.victim, "--use", "-n", "repo", "-d", str(base), *recipe)
    assert result.returncode == 1 and f"belongs to uid {users.member}" in clean_lines(result)[0]
    assert os.listdir(base) == []


# -- settings no other user wrote ---------------------------------------------------------------

# Run by another user: her config file at sys.argv[1], in the directories she makes for it.
PLANT_A_CONFIG_FILE = """\
import os, sys
os.makedirs(os.path.dirname(sys.argv[1]), exist_ok=True)
with open(sys.argv[1], "w") as f:
    f.write(sys.argv[2])
"""


def at_home(home: Path) -> dict[str, str]:
    """The variables of a user whose HOME is ``home``, so that ~/.config/shared-cache/config is read."""
    return {"HOME": str(home), "XDG_CONFIG_HOME": ""}


def test_a_config_file_another_user_planted_in_a_home_every_user_may_write_is_refused(shared, users, python, origin):
    # HOME=/tmp, as CI that runs with an arbitrary uid and containers set it: another user made
    # ~/.config/shared-cache/config there, and her rewrite rule served the victim her bytes for a
    # recipe without a checksum (with a proxy and a ca_bundle of hers, she could read the tokens
    # the victim sends).  Every command refuses it in one line, as ssh refuses such a file.
    real = origin.add("/data.txt", b"the real data\n")
    origin.add("/hers/data.txt", b"HER DATA\n")
    base, home = tmp_like(shared / "base"), tmp_like(shared / "home")
    config = home / ".config" / "shared-cache" / "config"
    done(code_as(python, users.other, PLANT_A_CONFIG_FILE, str(config),
                 f"rewrite = {origin.url('/')} = {origin.url('/hers/')}\n"))
    refused = f"sc: error: {config}: refusing the config file: it belongs to another user (uid {users.other})\n"
    for args in (["--use", "-d", str(base), "-n", "data", f"http:{real}"], ["config"],
                 ["--location", "-d", str(base), "-n", "data", f"http:{real}"]):
        result = run_as(python, users.victim, *args, variables=at_home(home))
        assert (result.returncode, result.stdout, result.stderr) == (2, "", refused), args
    assert origin.stats("/hers/data.txt").gets == origin.stats("/data.txt").gets == 0
    # Named by SC_CONFIG, hers is refused too; the victim's own file in a directory like /tmp is read.
    named = run_as(python, users.victim, "config", variables={"SC_CONFIG": str(config)})
    assert (named.returncode, named.stderr) == (2, refused), named.stderr
    own = base / "victim.config"
    own.write_text("keep = yes\n")
    os.chown(own, users.victim, users.victim)
    shown = run_as(python, users.victim, "config", variables={"SC_CONFIG": str(own)})
    assert shown.returncode == 0 and f"\nkeep = yes  # {own}:1\n" in shown.stdout, shown.stderr
    # A link there is anyone's: hers to the victim's file is not followed.
    link = base / "linked.config"
    done(code_as(python, users.other, "import os, sys; os.symlink(sys.argv[1], sys.argv[2])", str(own), str(link)))
    linked = run_as(python, users.victim, "config", variables={"SC_CONFIG": str(link)})
    assert (linked.returncode, linked.stderr) == (
        2, f"sc: error: {link}: refusing the config file: it is a symbolic link in a directory that others may "
           "write\n"), linked.stderr


@pytest.mark.parametrize(("file_owner", "file_mode", "directory_owner", "directory_mode", "why"), [
    ("victim", 0o644, "victim", 0o755, None),
    ("root", 0o644, "root", 0o755, None),
    ("victim", 0o600, "victim", 0o700, None),
    ("victim", 0o664, "victim", 0o755, "it is writable by other users (mode 0664)"),
    ("victim", 0o646, "victim", 0o755, "it is writable by other users (mode 0646)"),
    ("root", 0o666, "root", 0o755, "it is writable by other users (mode 0666)"),
    ("victim", 0o644, "other", 0o755, "it is in {directory}, which belongs to another user (uid {other})"),
    ("victim", 0o644, "victim", 0o775, "it is in {directory}, which is writable by other users (mode 0775)"),
    # Sticky or not: others cannot rename or remove the file there, but may make names in it.
    ("victim", 0o644, "victim", 0o1777, "it is in {directory}, which is writable by other users (mode 1777)"),
], ids=["hers", "root's", "hers alone", "group-writable", "world-writable", "root's world-writable",
        "in another's directory", "in a group-writable directory", "in a sticky directory others may write"])
def test_the_user_s_config_file_and_its_directory_must_be_written_by_the_user_or_root_alone(
        shared, users, python, file_owner, file_mode, directory_owner, directory_mode, why):
    uids = {"victim": users.victim, "other": users.other, "root": 0}
    home = tmp_like(shared / "home")
    directory = home / ".config" / "shared-cache"
    directory.mkdir(parents=True)
    config = directory / "config"
    config.write_text("keep = yes\n")
    for path, owner, mode in ((directory, directory_owner, directory_mode), (config, file_owner, file_mode)):
        os.chown(path, uids[owner], uids[owner])
        path.chmod(mode)
    os.chown(home / ".config", users.victim, users.victim)
    result = run_as(python, users.victim, "config", variables=at_home(home))
    if why is None:
        assert result.returncode == 0 and f"\nkeep = yes  # {config}:1\n" in result.stdout, result.stderr
    else:
        expected = why.format(directory=directory, other=users.other)
        assert (result.returncode, result.stdout, result.stderr) == (
            2, "", f"sc: error: {config}: refusing the config file: {expected}\n")


def test_a_config_file_and_directory_writable_by_the_user_s_private_group_alone_are_read(
        shared, users, python):
    # Where each user has a group of their own (Red Hat's and Debian's useradd), the umask is 002,
    # and the user's file and directory are group-writable: every command refused them.
    victim = pwd.getpwuid(users.victim).pw_name
    _admin("groupadd", victim, check=True)
    try:
        own = grp.getgrnam(victim).gr_gid
        _admin("usermod", "-g", victim, victim, check=True)
        home = tmp_like(shared / "home")
        directory = home / ".config" / "shared-cache"
        directory.mkdir(parents=True)
        config = directory / "config"
        config.write_text("keep = yes\n")
        for path, mode in ((home / ".config", 0o775), (directory, 0o775), (config, 0o664)):
            os.chown(path, users.victim, own)
            path.chmod(mode)
        result = run_as(python, users.victim, "config", variables=at_home(home))
        assert result.returncode == 0 and f"\nkeep = yes  # {config}:1\n" in result.stdout, result.stderr
        # The group of several users is no one's own: writable by it, the file is refused.
        os.chown(config, users.victim, users.gid)
        shared_group = run_as(python, users.victim, "config", variables=at_home(home))
        assert (shared_group.returncode, shared_group.stderr) == (
            2, f"sc: error: {config}: refusing the config file: it is writable by other users (mode 0664)\n")
    finally:
        _admin("usermod", "-g", "users", victim, check=False)
        _admin("groupdel", victim, check=False)


@pytest.mark.parametrize(("owner", "mode", "why"), [
    ("root", 0o644, None),
    ("victim", 0o644, "it belongs to uid {victim}, not to root"),
    ("root", 0o664, "it is writable by other users (mode 0664)"),
], ids=["root's", "a user's", "group-writable"])
def test_the_site_config_file_must_be_written_by_root_alone(shared, users, python, owner, mode, why):
    # /etc/shared-cache/config is made in a mount namespace, over the host's /etc.
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare, for a mount namespace whose /etc holds the site's file")
    upper, work = shared / "etc", shared / "work"
    (upper / "shared-cache").mkdir(parents=True)
    work.mkdir()
    site = upper / "shared-cache" / "config"
    site.write_text("keep = yes\n")
    os.chown(site, users.victim if owner == "victim" else 0, 0)
    site.chmod(mode)
    interpreter, env = python
    over_etc = f"mount -t overlay overlay -o lowerdir=/etc,upperdir={upper},workdir={work} /etc"
    result = subprocess.run(["unshare", "--mount", "sh", "-c", f'{over_etc} && exec "$@"', "sh",
                             interpreter, "-m", "sharedcache", "config"],
                            capture_output=True, text=True, timeout=BOUND, env=env)
    if result.stderr.startswith("mount:"):
        pytest.skip(f"cannot mount an overlay on /etc here: {result.stderr.strip()}")
    if why is None:
        assert result.returncode == 0 and "\nkeep = yes  # /etc/shared-cache/config:1\n" in result.stdout, result.stderr
    else:
        assert (result.returncode, result.stdout, result.stderr) == (
            2, "", f"sc: error: /etc/shared-cache/config: refusing the config file: {why.format(victim=users.victim)}\n")


# -- private whatever the umask -----------------------------------------------------------------


def assert_private(mine: Path, uid: int) -> None:
    """The user directory ``mine`` and all in it are ``uid``'s alone, with the modes sc promises."""
    assert stat.S_IMODE(mine.stat().st_mode) == 0o700
    for item in mine.rglob("*"):
        st = item.lstat()
        assert st.st_uid == uid, item
        if stat.S_ISLNK(st.st_mode):
            continue
        mode = stat.S_IMODE(st.st_mode)
        if "data" in item.relative_to(mine).parts:
            assert mode in (0o444, 0o555), (item, oct(mode))  # sealed; behind a 0700 directory
        else:
            assert mode & 0o077 == 0, (item, oct(mode))
            # The owner's own bits, which a umask of 0177 or 0777 would take, are all there.
            assert mode & 0o700 == (0o700 if stat.S_ISDIR(st.st_mode) else 0o600), (item, oct(mode))


@pytest.mark.parametrize("umask", [0o000, 0o077, 0o177, 0o277, 0o777], ids=oct)
def test_a_private_cache_is_private_whatever_the_umask_and_nobody_else_can_lock_it(
    shared, users, python, recipe, umask
):
    base = tmp_like(shared / "tmp")
    with Sleeper() as job:
        args = ["-n", "repo", "-d", str(base), "--pid", str(job.pid), *recipe]
        result = run_as(python, users.victim, "--use", *args, umask=umask)
        assert result.returncode == 0, result.stderr
        mine = user_dir(base, users.victim)
        assert_private(mine, users.victim)
        # Another user can neither reach nor lock anything in it.
        locks = [str(p) for p in mine.rglob("*lock")]
        assert locks
        probe = ("import os, sys\n"
                 "for path in sys.argv[1:]:\n"
                 "    try:\n"
                 "        os.open(path, os.O_RDONLY | os.O_NONBLOCK)\n"
                 "    except PermissionError:\n"
                 "        continue\n"
                 "    sys.exit(f'opened {path}')\n")
        done(code_as(python, users.member, probe, *locks))
        # The umask of the command sc runs is the caller's: sc never changes it.
        ran = run_as(python, users.victim, "run", "-n", "repo", "-d", str(base), *recipe, "--", "sh", "-c", "umask",
                     umask=umask)
        assert ran.returncode == 0, ran.stderr
        assert int(ran.stdout.strip(), 8) == umask


@pytest.mark.parametrize("umask", [0o177, 0o277, 0o777], ids=oct)
def test_a_umask_that_takes_the_owners_own_bits_leaves_every_command_working(shared, users, python, umask):
    # A umask of 0177 takes the search bit of the directories sc makes, 0277 the write bit of
    # everything, 0777 every bit: sc gives its own files their modes, its user's bits included.
    base = tmp_like(shared / "tmp")
    tarball, archive, plain = shared / "data.tar.gz", shared / "data.zip", shared / "notes.txt"
    nested = {"a/b/c/deep.txt": b"deep\n", **FILES}
    make_tarball(tarball, nested)
    with zipfile.ZipFile(archive, "w") as zipped:
        for name, data in nested.items():
            zipped.writestr(name, data)
    plain.write_bytes(b"plain\n")
    for made in (tarball, archive, plain):
        made.chmod(0o644)
    common = ["-d", str(base)]
    with Sleeper() as job:
        mine = ["--pid", str(job.pid), *common]
        for recipe, expected in (([f"file:{tarball}", "tar"], nested), ([f"file:{archive}", "zip"], nested),
                                 ([f"file:{plain}"], {"notes.txt": b"plain\n"})):
            for _ in range(2):  # the miss, then the warm use
                result = run_as(python, users.victim, "--use", *mine, *recipe, umask=umask)
                assert result.returncode == 0 and clean_lines(result) == [], result.stderr
                check_tree(Path(result.stdout.strip()), expected)
        # A group cache: what one member makes there under this umask, another uses under hers.
        group = ["--group", str(users.gid), "-n", "shared", *mine, f"file:{tarball}", "tar"]
        for uid, its_umask in ((users.victim, umask), (users.member, 0o022)):
            result = run_as(python, uid, "--use", *group, groups=(users.gid,), umask=its_umask)
            assert result.returncode == 0 and clean_lines(result) == [], result.stderr
            check_tree(Path(result.stdout.strip()), nested)
        for command in (["list", *common], ["--unuse", *mine, f"file:{plain}"], ["gc", *common]):
            result = run_as(python, users.victim, *command, umask=umask)
            assert result.returncode == 0 and "Traceback" not in result.stderr, (command, result.stderr)
    mine_dir = user_dir(base, users.victim)
    assert stat.S_IMODE(mine_dir.stat().st_mode) == 0o700
    # Then, under a usual umask, the same cache serves on.
    with Sleeper() as job:
        result = run_as(python, users.victim, "--use", *common, "--pid", str(job.pid), f"file:{tarball}", "tar")
    assert result.returncode == 0 and clean_lines(result) == [], result.stderr


# A program using sc as a library, which sets its umask after a first use, as a daemon does once
# started, then makes a second repository: sc had read the umask once, at the first use, and
# took its word for what the new umask would leave.
_UMASK_SET_BETWEEN_USES = """
import os, sys
import sharedcache
base, group, umask, recipe = sys.argv[1], sys.argv[2] or None, int(sys.argv[3], 8), sys.argv[4:]
os.umask(0o022)
with sharedcache.use(*recipe, name="first", directories=base, group=group, keep=True):
    pass
os.umask(umask)
with sharedcache.use(*recipe, name="second", directories=base, group=group, keep=True) as path:
    print(os.path.realpath(path))
"""


@pytest.mark.parametrize("umask", [0o077, 0o377, 0o777], ids=oct)
def test_a_program_that_sets_its_umask_after_a_first_use_gets_a_private_cache_s_modes(
    shared, users, python, recipe, umask
):
    # Under 077 the data was the owner's alone (0400, 0500), under 0377 the population failed
    # with "something else was put there at once, 20 times over", and under 0777 with a bare
    # "Permission denied".
    base = tmp_like(shared / "tmp")
    second = Path(done(code_as(python, users.victim, _UMASK_SET_BETWEEN_USES, str(base), "", oct(umask),
                               *recipe)).strip())
    assert_private(user_dir(base, users.victim), users.victim)
    check_tree(second, FILES)


@pytest.mark.parametrize("umask", [0o077, 0o377, 0o777], ids=oct)
def test_a_program_that_sets_its_umask_after_a_first_use_makes_group_data_the_others_read(
    shared, users, python, recipe, umask
):
    # Under 077 the data was 0400 and 0555: another member's read failed with "Permission denied".
    base, _, _ = group_cache(shared, users)
    second = done(code_as(python, users.victim, _UMASK_SET_BETWEEN_USES, str(base), str(users.gid), oct(umask),
                          *recipe, groups=(users.gid,))).strip()
    read = "import sys; print(*(open(name, 'rb').read().hex() for name in sys.argv[1:]))"
    found = done(code_as(python, users.member, read, *(f"{second}/{name}" for name in FILES), groups=(users.gid,)))
    assert found.split() == [data.hex() for data in FILES.values()]


@pytest.mark.parametrize("left", [0o000, 0o400, 0o500, 0o600], ids=oct)
def test_a_user_directory_left_without_its_owners_bits_is_given_them_back(shared, users, python, recipe, left):
    # What an sc that took the umask's word for it left under umask 0777, 0377, 0277 or 0177:
    # the user's directory, with nothing in it that she may enter or write.
    base = tmp_like(shared / "tmp")
    mine = user_dir(base, users.victim)
    mine.mkdir(mode=left)
    mine.chmod(left)
    os.chown(mine, users.victim, users.victim)
    with Sleeper() as job:
        result = run_as(python, users.victim, "--use", "-d", str(base), "--pid", str(job.pid), *recipe)
        assert result.returncode == 0 and clean_lines(result) == [], result.stderr
        assert stat.S_IMODE(mine.stat().st_mode) == 0o700
        check_tree(Path(result.stdout.strip()), FILES)


def test_the_umask_is_unchanged_in_a_group_cache(shared, users, python, recipe):
    base = tmp_like(shared / "tmp")
    ran = run_as(python, users.victim, "run", "--group", str(users.gid), "-n", "repo", "-d", str(base),
                 *recipe, "--", "sh", "-c", "umask", groups=(users.gid,), umask=0o077)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == "0077"


# -- sharing only by consent --------------------------------------------------------------------


def test_a_setgid_directory_planted_by_a_member_is_never_joined_without_consent(shared, users, python, recipe):
    base, second = tmp_like(shared / "tmp"), tmp_like(shared / "var-tmp")
    plant = ("import os, sys\n"
             "for path in sys.argv[2:]:\n"
             "    os.mkdir(path)\n"
             "    os.chown(path, -1, int(sys.argv[1]))\n"
             "    os.chmod(path, 0o2777)\n")
    done(code_as(python, users.member, plant, str(users.gid), str(base / ".shared-cache"),
                 str(base / f".shared-cache-g{users.gid}"), str(user_dir(base, users.victim)),
                 groups=(users.gid,)))
    with Sleeper() as job:
        result = run_as(python, users.victim, "--use", "-n", "repo", "-d", f"{base}:{second}",
                        "--pid", str(job.pid), *recipe, groups=(users.gid,))
        assert result.returncode == 0, result.stderr
        assert Path(result.stdout.strip()) == user_dir(second, users.victim) / "repo"
        assert "belongs to uid" in clean_lines(result)[0]
    for planted in (base / ".shared-cache", base / f".shared-cache-g{users.gid}", user_dir(base, users.victim)):
        assert os.listdir(planted) == [], f"nothing was written into {planted}"


def test_committed_data_in_a_group_cache_cannot_be_changed_by_another_member(shared, users, python, recipe):
    base = tmp_like(shared / "tmp")
    group = ["--group", str(users.gid)]
    with Sleeper() as job:
        result = run_as(python, users.victim, "--use", *group, "-n", "repo", "-d", str(base),
                        "--pid", str(job.pid), *recipe, groups=(users.gid,))
        assert result.returncode == 0, result.stderr
        data = Path(os.path.realpath(result.stdout.strip()))
        entry = data.parent
        change = ("import os, sys\n"
                  "data, entry = sys.argv[1], sys.argv[2]\n"
                  "marker, = (n for n in os.listdir(entry) if n.startswith('entry.') and n.endswith('.json'))\n"
                  "attempts = [lambda: os.unlink(os.path.join(data, 'data', 'part-000.bin')),\n"
                  "            lambda: open(os.path.join(data, 'data', 'new'), 'wb'),\n"
                  "            lambda: open(os.path.join(data, 'data', 'part-001.bin'), 'r+b'),\n"
                  "            lambda: os.rename(data, data + '.old'),\n"
                  "            lambda: os.unlink(os.path.join(entry, marker)),\n"
                  "            lambda: os.chmod(data, 0o777)]\n"
                  "for attempt in attempts:\n"
                  "    try:\n"
                  "        attempt()\n"
                  "    except PermissionError:\n"
                  "        continue\n"
                  "    sys.exit(f'a member changed the committed repository: {attempt}')\n")
        done(code_as(python, users.member, change, str(data), str(entry), groups=(users.gid,)))
        check_tree(data, FILES)
        # But any member can delete it once it is unused: here the last release is the member's.
        member = run_as(python, users.member, "--use", *group, "-n", "repo", "-d", str(base),
                        "--pid", str(job.pid), *recipe, groups=(users.gid,))
        assert member.returncode == 0, member.stderr
        assert run_as(python, users.victim, "--unuse", *group, "-n", "repo", "-d", str(base), "--pid",
                      str(job.pid), *recipe, groups=(users.gid,)).returncode == 0
        last = run_as(python, users.member, "--unuse", *group, "-n", "repo", "-d", str(base), "--pid",
                      str(job.pid), *recipe, groups=(users.gid,))
        assert last.returncode == 0, last.stderr
        assert not entry.exists()


# -- planted and swapped objects ----------------------------------------------------------------

PLANT = """\
import os, sys
root, path, kind, target = sys.argv[1:5]
full = os.path.join(root, path)
try:
    os.rename(full, os.path.join(root, ".gone-" + path.replace("/", "-")))
except FileNotFoundError:
    pass
if kind == "symlink":
    os.symlink(target, full)
elif kind == "fifo":
    os.mkfifo(full, 0o666)
elif kind == "file":
    with open(full, "w") as f:
        f.write("planted")
elif kind == "unreadable file":  # (a member's umask 077)
    os.close(os.open(full, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
elif kind == "directory of hers":  # which only she may move to another directory, or write in
    os.mkdir(full, 0o755)
    open(os.path.join(full, "hers"), "w").close()
else:
    os.mkdir(full, 0o777)
"""


def plant_after_a_use(python: tuple[str, dict[str, str]], users: Users, base: Path, args: list[str], path: str,
                      kind: str, home: Path) -> None:
    """The victim makes the group cache in ``base`` with a kept repository (``args``), and releases
    it; then the member plants a ``kind`` at ``path`` in it (a symlink leads to ``home``)."""
    first = run_as(python, users.victim, "--use", "--keep", *args, groups=(users.gid,))
    assert first.returncode == 0, first.stderr
    assert run_as(python, users.victim, "--unuse", *args, groups=(users.gid,)).returncode == 0
    root = base / f".shared-cache-g{users.gid}"
    done(code_as(python, users.member, PLANT, str(root), path, kind, str(home), groups=(users.gid,)))


@contextlib.contextmanager
def planted(shared: Path, users: Users, python: tuple[str, dict[str, str]], recipe: list[str], home: Path,
            path: str, kind: str) -> Iterator[tuple[Path, list[str], list[str]]]:
    """A group cache in a fresh base where the member planted a ``kind`` at ``path`` after the
    victim's kept repository 'repo' (:func:`plant_after_a_use`): the base, the option naming the
    group, and the words a use adds after its name (for a live owner).  The victim's home must
    be unchanged at the end."""
    base = tmp_like(shared / "tmp")
    group = ["--group", str(users.gid)]
    before = snapshot(home)
    with Sleeper() as job:
        rest = ["-d", str(base), "--pid", str(job.pid), *recipe]
        plant_after_a_use(python, users, base, [*group, "-n", "repo", *rest], path, kind, home)
        yield base, group, rest
    assert snapshot(home) == before


@pytest.mark.parametrize("kind", ["symlink", "fifo", "file", "directory"])
@pytest.mark.parametrize(
    "path", ["trash", "stage", "objects", "populate", "stage.lock", "cache.info", "budget", "index.sqlite",
             "populate/repo.lock", "objects/repo"]
)
def test_a_member_planting_in_a_group_cache_never_makes_another_act_outside_or_hang(
    shared, users, python, recipe, home, path, kind
):
    base = tmp_like(shared / "tmp")
    group = ["--group", str(users.gid)]
    before = snapshot(home)
    with Sleeper() as job:
        rest = ["-d", str(base), "--pid", str(job.pid), *recipe]
        args = [*group, "-n", "repo", *rest]
        plant_after_a_use(python, users, base, args, path, kind, home)
        # The victim's commands: each returns within its bound, clearly.
        other = [*group, "-n", "other", *rest]  # not kept: its release deletes it, through the trash
        for command in (["--use", *args], ["--unuse", *args], ["--use", *other], ["--unuse", *other],
                        ["list", *group, "-d", str(base)], ["gc", *group, "-d", str(base)],
                        ["--use", *other], ["--unuse", *other], ["list", *group, "-d", str(base)]):
            result = run_as(python, users.victim, *command, groups=(users.gid,))
            clean_lines(result)
            assert result.returncode in (0, 1), (command, result.stderr)
            if result.returncode == 0 and command[0] == "--use":
                check_tree(Path(result.stdout.strip()), FILES)
    assert snapshot(home) == before


@pytest.mark.parametrize("kind", ["symlink", "fifo", "file", "directory"])
@pytest.mark.parametrize("suffix", ["-wal", "-shm", "-journal"])
def test_a_member_s_file_beside_the_index_of_a_group_cache_is_refused_then_set_aside_by_gc(
    shared, users, python, recipe, home, suffix, kind
):
    # SQLite opens its journals, beside the index, for writing and without O_NONBLOCK: a FIFO
    # there hung every command that opened the index, SIGTERM and --timeout included, and a
    # directory or a file the victim may not write made every write fail, gc's repair too.
    with planted(shared, users, python, recipe, home, f"index.sqlite{suffix}", kind) as (base, group, rest):
        other = [*group, "-n", "other", *rest]
        refused = run_as(python, users.victim, "--use", *other, groups=(users.gid,))
        assert refused.returncode in (0, 1) and len(clean_lines(refused)) <= 1, refused.stderr
        gc = run_as(python, users.victim, "gc", *group, "-d", str(base), groups=(users.gid,))
        assert gc.returncode == 0, gc.stderr
        again = run_as(python, users.victim, "--use", *other, groups=(users.gid,))
        assert again.returncode == 0, again.stderr
        check_tree(Path(again.stdout.strip()), FILES)


@pytest.mark.parametrize("kind", ["unreadable file", "directory of hers"])
@pytest.mark.parametrize("path", ["stage.lock", "populate/.reservations.lock", "populate/other.lock",
                                  "populate/other.work", "populate/repo.work", "trash", "stage"])
def test_what_a_member_plants_that_another_cannot_open_or_move_is_refused_clearly_then_put_away_by_gc(
    shared, users, python, recipe, home, path, kind
):
    # A file of hers made under umask 077, or a directory of hers, at a name every population
    # needs: each use failed with a bare "Permission denied", and gc with it, repairing nothing.
    with planted(shared, users, python, recipe, home, path, kind) as (base, group, rest):
        other = [*group, "-n", "other", "--size", "1MB", *rest]
        with Sleeper() as early:  # (its use, if one is given, ends with it: gc deletes the entry)
            refused = run_as(python, users.victim, "--use", *other, "--pid", str(early.pid), groups=(users.gid,))
            if path == "trash":  # nothing a population needs: what it cannot clear after its commit fails no use
                assert refused.returncode == 0, refused.stderr
                # The last release, which cannot delete, fails whole: the use stays held.
                unused = run_as(python, users.victim, "--unuse", *other, "--pid", str(early.pid),
                                groups=(users.gid,))
                assert unused.returncode == 1 and len(clean_lines(unused)) == 1, unused.stderr
                assert len(os.listdir(base / f".shared-cache-g{users.gid}" / "objects" / "other" / "leases")) == 1
                # A population that fails says its own failure, not the trash's ("... run gc").
                wrong = [*group, "-n", "wrong", "-d", str(base), recipe[0], "md5:" + "0" * 32, "tar"]
                failed = run_as(python, users.victim, "--use", *wrong, groups=(users.gid,))
                assert failed.returncode == 1 and "md5 mismatch" in failed.stderr, failed.stderr
        lines = clean_lines(refused)
        assert refused.returncode == 0 or len(lines) == 1, refused.stderr
        for line in lines:
            assert "/proc/self/fd" not in line and "ermission denied" not in line, line
            assert f".shared-cache-g{users.gid}/{path}" in line, line
        gc = run_as(python, users.victim, "gc", *group, "-d", str(base), groups=(users.gid,))
        assert gc.returncode == 0 and not clean_lines(gc), gc.stderr
        again = run_as(python, users.victim, "--use", *other, groups=(users.gid,))
        assert again.returncode == 0, again.stderr
        check_tree(Path(again.stdout.strip()), FILES)
        released = run_as(python, users.victim, "--unuse", *other, groups=(users.gid,))
        assert released.returncode == 0 and not clean_lines(released), released.stderr
        assert not (base / f".shared-cache-g{users.gid}" / "objects" / "other").exists()  # the last use's release


@pytest.mark.parametrize("kind", ["unreadable file", "directory of hers"])
def test_a_budget_a_member_made_that_another_cannot_read_or_move_is_damaged_then_put_away_by_gc(
    shared, users, python, recipe, home, kind
):
    # A directory of hers at `budget` failed the victim's gc with a bare PermissionError: only
    # she may move it into the trash.  A file of hers made under umask 077, taken for none by a
    # download, failed the last release and gc ("cannot read ...: Permission denied").
    with planted(shared, users, python, recipe, home, "budget", kind) as (base, group, rest):
        root = base / f".shared-cache-g{users.gid}"
        other = [*group, "-n", "other", *rest]
        # A download and the last release take it for none, saying so in one line.
        for command in (["--use", *other], ["--unuse", *other]):
            result = run_as(python, users.victim, *command, groups=(users.gid,))
            lines = clean_lines(result)
            assert result.returncode == 0 and len(lines) == 1 and "is damaged" in lines[0], (command, result.stderr)
        assert not (root / "objects" / "other").exists()  # (the last use's release deleted it)
        gc = run_as(python, users.victim, "gc", *group, "-d", str(base), groups=(users.gid,))
        assert gc.returncode == 0 and not clean_lines(gc), gc.stderr
        assert "damaged budget removed" in gc.stdout, gc.stdout
        assert not os.path.lexists(root / "budget")
        # Planted again: a budget set (as the warning says to do) puts it away too.
        done(code_as(python, users.member, PLANT, str(root), "budget", kind, str(home), groups=(users.gid,)))
        again = run_as(python, users.victim, "--use", *other, "--max-size", "100MB", groups=(users.gid,))
        assert again.returncode == 0 and len(clean_lines(again)) <= 1, again.stderr
        assert (root / "budget").read_bytes() == b"100000000"
        unused = run_as(python, users.victim, "--unuse", *other, groups=(users.gid,))
        assert unused.returncode == 0 and not clean_lines(unused), unused.stderr


# Another user's tree holding a budget of 5 bytes, put where the victim's cache goes: ARGV is that
# place, how (a link to the tree, or the tree itself), the tree, and where its budget is in it.
SQUAT_WITH_A_BUDGET = """\
import os, sys
at, kind, tree, budget = sys.argv[1:5]
os.makedirs(os.path.dirname(os.path.join(tree, budget)), exist_ok=True)
with open(os.path.join(tree, budget), "w") as f:
    f.write("5")
if kind == "link":
    os.symlink(tree, at)
else:
    os.rename(tree, at)
"""


@pytest.mark.parametrize("kind", ["link", "directory of hers"])
@pytest.mark.parametrize("cache", ["private", "group"])
def test_sc_config_shows_no_budget_that_another_user_planted_where_the_victim_s_cache_goes(
    shared, users, python, recipe, cache, kind
):
    # sc config showed the budget of a tree another user put at the victim's directory (or the
    # group's cache) as the victim's "stored" budget, though every use and gc refuse it there.
    base = tmp_like(shared / "tmp")
    if cache == "private":
        group, at, budget = [], user_dir(base, users.victim), ".cache/budget"
    else:
        group, at, budget = ["--group", str(users.gid)], base / f".shared-cache-g{users.gid}", "budget"
    done(code_as(python, users.outsider, SQUAT_WITH_A_BUDGET, str(at), kind, str(base / "evil"), budget))
    before = snapshot(base)
    shown = run_as(python, users.victim, "config", "-d", str(base), *group, groups=(users.gid,))
    assert shown.returncode == 0 and not clean_lines(shown), shown.stderr
    (row,) = (line for line in shown.stdout.splitlines() if line.startswith("max_size = "))
    prefix = f"max_size = (not set)  # default; stored: {base} refused ("
    assert row.startswith(prefix) and row.endswith(")"), row
    why = row.removeprefix(prefix).removesuffix(")")
    assert snapshot(base) == before, "sc config made or changed something"
    # Refused for the reason the uses give.
    used = run_as(python, users.victim, "--use", "-d", str(base), *group, *recipe, groups=(users.gid,))
    assert used.returncode == 1 and why in used.stderr, (why, used.stderr)


# How a member renames an entry (objects/repo) into the trash: ARGV is the cache's directory.
INTO_THE_TRASH = {
    "itself": "import os, sys; os.rename(f'{sys.argv[1]}/objects/repo', f'{sys.argv[1]}/trash/x')",
    # In a directory of hers, one level down: the check looked only at the trash's own trees.
    "in a directory": "import os, sys; os.mkdir(f'{sys.argv[1]}/trash/box'); os.chmod(f'{sys.argv[1]}/trash/box', 0o2770); "
                      "os.rename(f'{sys.argv[1]}/objects/repo', f'{sys.argv[1]}/trash/box/repo')",
    "with objects": "import os, sys; os.rename(f'{sys.argv[1]}/objects', f'{sys.argv[1]}/trash/x')",
}


@pytest.mark.parametrize("how", list(INTO_THE_TRASH))
def test_an_entry_in_use_that_a_member_renames_into_the_trash_is_not_deleted_under_its_users(
    shared, users, python, recipe, how
):
    # Any member may rename an entry of a group cache into its trash; the victim's next command
    # emptied the trash, and deleted the data her live job was reading.
    base = tmp_like(shared / "tmp")
    group = ["--group", str(users.gid)]
    root = base / f".shared-cache-g{users.gid}"
    with Sleeper() as job:
        rest = ["-d", str(base), "--pid", str(job.pid), *recipe]
        used = run_as(python, users.victim, "--use", *group, "-n", "repo", *rest, groups=(users.gid,))
        assert used.returncode == 0, used.stderr
        reading = os.open(Path(used.stdout.strip()).resolve(), os.O_RDONLY | os.O_DIRECTORY)  # (the job's view)
        try:
            done(code_as(python, users.member, INTO_THE_TRASH[how], str(root), groups=(users.gid,)))
            other = run_as(python, users.victim, "--use", *group, "-n", "other", *rest, groups=(users.gid,))
            assert other.returncode == 0, other.stderr
            gc = run_as(python, users.victim, "gc", *group, "-d", str(base), groups=(users.gid,))
            assert gc.returncode == 0, gc.stderr
            check_tree(Path(f"/proc/self/fd/{reading}"), FILES)
        finally:
            os.close(reading)
    # Its users ended: removed then, by the victim's gc, and the member's directory by hers.
    for user in (users.victim, users.member):
        gc = run_as(python, user, "gc", *group, "-d", str(base), groups=(users.gid,))
        assert gc.returncode == 0, gc.stderr
    assert not os.listdir(root / "trash")


# Swaps each of PATHS for a symlink to TARGET and back, in a loop, for SECONDS.
SWAP = f"""\
import os, sys, time
target, stop, *paths = sys.argv[1:]
end = time.monotonic() + {2 * BOUND}  # (a bound: the test makes the file `stop` once its rounds are done)
while not os.path.exists(stop) and time.monotonic() < end:
    for real in paths:
        aside = real + ".real"
        try:
            os.rename(real, aside)
            os.symlink(target, real)
            time.sleep(0.001)
            os.unlink(real)
            os.rename(aside, real)
        except OSError:
            pass
"""


def test_swapping_stage_and_trash_for_links_during_populations_never_reaches_outside(
    shared, users, python, recipe, home
):
    base, group, root = group_cache(shared, users)
    before = snapshot(home)
    with Sleeper() as job:
        args = [*group, "-d", str(base), "--pid", str(job.pid), *recipe]
        assert run_as(python, users.victim, "--use", "-n", "warm", *args, groups=(users.gid,)).returncode == 0
        stop = shared / "stop"
        attacker = code_as(python, users.member, SWAP, str(home), str(stop), str(root / "stage"), str(root / "trash"),
                           groups=(users.gid,))
        try:
            for rounds in range(1, 25):  # (about as many as 3 s allow on an idle machine)
                used = run_as(python, users.victim, "--use", "-n", f"r{rounds}", *args, groups=(users.gid,))
                clean_lines(used)
                if used.returncode == 0:
                    check_tree(Path(used.stdout.strip()), FILES)
                released = run_as(python, users.victim, "--unuse", "-n", f"r{rounds}", *args, groups=(users.gid,))
                clean_lines(released)
        finally:
            stop.touch()
            done(attacker)
    assert snapshot(home) == before


# Loaded by sc as its sitecustomize: the first time SQLite is about to connect, exchange the
# index of the cache at $SC_TEST_ROOT for a symlink to $SC_TEST_LURE (renameat2's
# RENAME_EXCHANGE), as another member of a group cache may do at that moment.
SWAP_BEFORE_CONNECTING = """\
import ctypes, ctypes.util, os, _sqlite3
_root, _lure = os.environ["SC_TEST_ROOT"], os.environ["SC_TEST_LURE"]
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_connect = _sqlite3.connect
def connect(*args, **kwargs):
    index, link = os.path.join(_root, "index.sqlite"), os.path.join(_root, ".lure")
    if not os.path.lexists(link):
        os.symlink(_lure, link)
        if _libc.renameat2(-100, link.encode(), -100, index.encode(), 2) != 0:
            raise OSError(ctypes.get_errno(), "renameat2")
    return _connect(*args, **kwargs)
_sqlite3.connect = connect
"""


def test_an_index_swapped_for_a_link_as_sqlite_connects_is_refused_and_nothing_written_there(tmp_path):
    # SQLite opens the index by its path and follows symlinks: the index checked, then swapped
    # for a link to an empty file of the victim's just before SQLite opened it (a member of a
    # group cache watching with inotify can), had her command write an index there.
    base, site, lure = tmp_path / "base", tmp_path / "site", tmp_path / "app.db"
    base.mkdir()
    site.mkdir()
    lure.touch()  # empty: SQLite takes it for a new database
    source = tmp_path / "data.bin"
    source.write_bytes(b"data\n")
    assert sc("--use", "--keep", "-d", str(base), "-n", "kept", f"file:{source}").returncode == 0
    (site / "sitecustomize.py").write_text(SWAP_BEFORE_CONNECTING)
    root = control(base)
    swapped = sc("list", "-d", str(base), env=sc_env(PYTHONPATH=str(site), SC_TEST_ROOT=str(root),
                                                   SC_TEST_LURE=str(lure)))
    assert (root / "index.sqlite").is_symlink(), "the swap did not happen"
    assert swapped.returncode == 1, swapped.stderr
    assert swapped.stderr.startswith("sc: error: the index of cache ") and "was replaced" in swapped.stderr
    assert lure.stat().st_size == 0 and sorted(os.listdir(tmp_path)) == ["app.db", "base", "data.bin", "site"]
    # gc sets the link aside and rebuilds the index from the entries.
    assert sc("gc", "-d", str(base)).returncode == 0
    listed = sc("list", "--json", "-d", str(base))
    assert [row["name"] for row in json.loads(listed.stdout)] == ["kept"], listed.stderr
    assert lure.stat().st_size == 0


# Loaded by the victim's sc as its sitecustomize: it pauses once it has made its staging
# directory, so that the test can act while she populates.
PAUSE_ONCE_STAGED = pause_at('event == "os.mkdir" and args[1] == 0o700 and len(str(args[0])) == 24')


def test_the_creator_swapping_the_group_cache_for_a_link_mid_population_never_makes_her_write_there(
    shared, users, python, recipe, home
):
    # The member who made a group cache owns its directory, and may rename it and put a link to
    # a directory of the victim's in its place while she populates.  Her commit then opened the
    # index, its reserve, the budget and stage.lock by their paths, through the link: it made an
    # index and a 256 KiB reserve in her directory.
    base, group, root = group_cache(shared, users)
    target = home / "projects"
    target.mkdir()
    os.chown(target, users.victim, users.victim)
    made = run_as(python, users.member, "--use", "--keep", *group, "-d", str(base), "-n", "first", *recipe,
                  groups=(users.gid,))
    assert made.returncode == 0, made.stderr
    before = snapshot(home)
    site, signals = shared / "site", tmp_like(shared / "signals")
    staged, go = signals / "staged", signals / "go"
    site.mkdir()
    (site / "sitecustomize.py").write_text(PAUSE_ONCE_STAGED)
    interpreter, env = python
    env = {**env, "PYTHONPATH": f"{site}{os.pathsep}{env['PYTHONPATH']}", "SC_TEST_PAUSED": str(staged),
           "SC_TEST_GO": str(go)}
    with Sleeper() as job:
        victim = subprocess.Popen([interpreter, "-m", "sharedcache", "--use", *group, "-d", str(base), "-n", "second",
                                   "--pid", str(job.pid), *recipe], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, env=env, user=users.victim, group=users.victim,
                                  extra_groups=[users.gid], cwd="/")
        try:
            deadline = time.monotonic() + BOUND
            while not staged.exists():
                assert victim.poll() is None and time.monotonic() < deadline, victim.communicate()
                time.sleep(0.01)
            done(code_as(python, users.member, "import os, sys; os.rename(sys.argv[1], sys.argv[1] + '.away'); "
                         "os.symlink(sys.argv[2], sys.argv[1])", str(root), str(target), groups=(users.gid,)))
            go.touch()
            _, err = victim.communicate(timeout=BOUND)
        finally:
            if victim.poll() is None:
                victim.kill()
                victim.wait(BOUND)
    assert victim.returncode == 1 and len(err.strip().splitlines()) == 1 and err.startswith("sc: "), err
    assert f"cache {root} is no longer a directory" in err, err
    assert snapshot(home) == {**before, "projects": before["projects"]}
    assert os.listdir(target) == []


# The victim's program, a library user: it opens the group cache ROOT of GID, says "open", waits
# for the file GO (at most 30 s), then sets a budget, stores, collects and stores again, each
# step allowed to fail; prints what each step raised.
LIBRARY_USER = """
import os, sys, time
from sharedcache import FsCache
root, gid, go = sys.argv[1], int(sys.argv[2]), sys.argv[3]
cache = FsCache(root, group=gid)
print("open", flush=True)
end = time.monotonic() + 30
while not os.path.exists(go) and time.monotonic() < end:
    time.sleep(0.01)
def store():
    with cache.store("x") as path:
        (path / "f").write_text("x")
for step in (lambda: setattr(cache, "max_size", "1GB"), store, cache.gc, store):
    try:
        step()
        print("done")
    except Exception as e:
        print(type(e).__name__, e)
"""


def test_the_creator_swapping_the_group_cache_for_a_link_under_a_library_user_gets_nothing_written_there(
    shared, users, python, recipe, home
):
    # A process that opened the cache before the swap wrote its budget, stage.lock, the index's
    # reserve and its lock probes by their paths, through the link.
    base = tmp_like(shared / "tmp")
    root = base / f".shared-cache-g{users.gid}"
    target = home / "projects"
    target.mkdir()
    os.chown(target, users.victim, users.victim)
    made = run_as(python, users.member, "--use", "--keep", "--group", str(users.gid), "-d", str(base), "-n", "first",
                  *recipe, groups=(users.gid,))
    assert made.returncode == 0, made.stderr
    before = snapshot(home)
    go = tmp_like(shared / "signals") / "go"
    victim = code_as(python, users.victim, LIBRARY_USER, str(root), str(users.gid), str(go), groups=(users.gid,))
    try:
        assert victim.stdout is not None and victim.stdout.readline() == "open\n", victim.communicate(timeout=BOUND)
        done(code_as(python, users.member, "import os, sys; os.rename(sys.argv[1], sys.argv[1] + '.away'); "
                     "os.symlink(sys.argv[2], sys.argv[1])", str(root), str(target), groups=(users.gid,)))
        go.touch()
        steps = done(victim)
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait(BOUND)
    assert "Traceback" not in steps
    assert os.listdir(target) == [], steps
    assert snapshot(home) == before


# Whenever the work directory is a directory, put it aside and a link to ``target`` in its place.
HIJACK_WORK = """\
import os, sys, time
target, seconds, work = sys.argv[1], float(sys.argv[2]), sys.argv[3]
end = time.monotonic() + seconds
while time.monotonic() < end:
    try:
        if not os.path.islink(work):
            os.rename(work, work + ".aside-" + str(time.monotonic_ns()))
            os.symlink(target, work)
    except OSError:
        pass
"""


# Links into ``target`` for the files a population makes in its work directory, planted in it
# and in every directory below it that she may write.
PLANT_IN_WORK = """\
import os, sys, time
target, seconds, work = sys.argv[1], float(sys.argv[2]), sys.argv[3]
end = time.monotonic() + seconds
while time.monotonic() < end:
    for directory, _, _ in os.walk(work):
        for name in ("partial.data", "partial.json", ".identity", "unzip.spool"):
            try:
                os.symlink(os.path.join(target, name), os.path.join(directory, name))
            except OSError:
                pass
"""


@pytest.mark.parametrize("attack", [HIJACK_WORK, PLANT_IN_WORK], ids=["renaming it", "planting in it"])
def test_hijacking_a_population_work_directory_never_reaches_outside(shared, users, python, home, attack):
    """A member renames the victim's population work directory and puts in its place a link into
    the victim's home, or plants such links in it, over and over: the partial download, its
    record, the marker and a zip's spool are never written, truncated or removed there."""
    base = tmp_like(shared / "tmp")
    blob = shared / "blob.bin"
    blob.write_bytes(os.urandom(3_000_000))
    blob.chmod(0o644)
    archive = shared / "data.zip"
    with zipfile.ZipFile(archive, "w") as out:
        out.writestr("inside.txt", b"zipped")
    archive.chmod(0o644)
    recipes = {"raw": [f"file:{blob}", f"md5:{hashlib.md5(blob.read_bytes()).hexdigest()}"],
               "zip": [f"file:{archive}", f"md5:{hashlib.md5(archive.read_bytes()).hexdigest()}", "zip"]}
    for bait in ("partial.data", "partial.json", ".identity", "unzip.spool"):  # hers, so she could write them
        (home / bait).write_text("the victim's own\n")
        os.chown(home / bait, users.victim, users.victim)
    before = snapshot(home)
    root = base / f".shared-cache-g{users.gid}"
    with Sleeper() as job:
        common = ["--group", str(users.gid), "-d", str(base), "--pid", str(job.pid)]
        assert run_as(python, users.victim, "--use", "-n", "warm", *common, *recipes["raw"],
                      groups=(users.gid,)).returncode == 0
        for name, recipe in recipes.items():
            attacker = code_as(python, users.member, attack, str(home), "2",
                               str(root / "populate" / f"{name}.work"), groups=(users.gid,))
            populated = 0
            try:
                end = time.monotonic() + 2
                while time.monotonic() < end:
                    used = run_as(python, users.victim, "--use", "-n", name, *common, *recipe, groups=(users.gid,))
                    clean_lines(used)
                    populated += used.returncode == 0
                    clean_lines(run_as(python, users.victim, "--unuse", "-n", name, *common, *recipe,
                                       groups=(users.gid,)))
            finally:
                done(attacker)
            assert populated, f"no {name} population got through the attack"
    assert snapshot(home) == before


def test_an_unpack_acts_through_its_directory_whatever_becomes_of_the_path_to_it(tmp_path: Path) -> None:
    """In a group cache, the staging directory is reached through its descriptor (/proc/self/fd),
    because a member may rename ``stage`` and put a link in its place, to a copy of the layout
    that she watched being made.  The unpack, midway, must go on in the directory it was given."""
    from sharedcache.loaders.archives import SafeTree
    from sharedcache.loaders.protocol import Context

    stage, moved, lure = tmp_path / "stage", tmp_path / "moved", tmp_path / "lure"
    (stage / "id" / "data").mkdir(parents=True)
    (lure / "id" / "data" / "sub").mkdir(parents=True)  # the attacker's copy of what was made
    fd = os.open(stage / "id", os.O_RDONLY | os.O_DIRECTORY)
    try:
        with SafeTree(Path(f"/proc/self/fd/{fd}/data"), Context(work=tmp_path, what="test")) as tree:
            tree.write_file("first", 1, 0o644, 0, lambda _: b"1")
            tree.mkdir("sub", 0o755, 0)
            os.rename(stage, moved)
            os.symlink(lure, stage)
            tree.write_file("sub/deeper/second", 1, 0o644, 0, lambda _: b"2")
            tree.hardlink("sub/third", "first")
            tree.symlink("sub/link", "../first")
            tree.finish()
    finally:
        os.close(fd)
    made = {str(path.relative_to(moved / "id" / "data")) for path in (moved / "id" / "data").rglob("*")}
    assert made == {"first", "sub", "sub/deeper", "sub/deeper/second", "sub/third", "sub/link"}
    assert sorted(str(path.relative_to(lure)) for path in lure.rglob("*")) == ["id", "id/data", "id/data/sub"]


def test_swapping_an_entry_for_a_link_during_uses_and_releases_never_reaches_outside(
    shared, users, python, recipe, home
):
    # The worst case: the link leads to a directory of the victim's that looks like the entry
    # (its lock, marker, metadata, and leases of owners long dead), so that a hold or a release
    # acting through the link would touch her files: reclaim those leases, add its own, flag it.
    base, group, root = group_cache(shared, users)
    with Sleeper() as job:
        args = [*group, "-d", str(base), "--pid", str(job.pid), "-n", "warm", *recipe]
        first = run_as(python, users.victim, "--use", "--keep", *args, groups=(users.gid,))
        assert first.returncode == 0, first.stderr
        entry = root / "objects" / "warm"
        decoy = home / "decoy"
        (decoy / "leases").mkdir(parents=True)
        for name in ("lock", "entry.json", "meta"):
            (decoy / name).write_bytes((entry / name).read_bytes())
        (decoy / "leases" / "0:1:1").write_text("")
        (decoy / "leases" / "not a lease").write_text("")
        for item in [decoy, *decoy.rglob("*")]:
            os.chown(item, users.victim, users.victim)
        before, touched = snapshot(home), os.stat(decoy / "lock").st_mtime_ns
        stop = shared / "stop"
        attacker = code_as(python, users.member, SWAP, str(decoy), str(stop), str(entry), groups=(users.gid,))
        try:
            for _ in range(20):  # (about as many as 4 s allow on an idle machine)
                # (What she reads meanwhile is up to the member, whom she trusts by joining: the
                # path goes through objects/, which every member may rename things in.)
                for command in (["--use", *args], ["--unuse", *args], ["gc", *group, "-d", str(base)]):
                    clean_lines(run_as(python, users.victim, *command, groups=(users.gid,)))
        finally:
            stop.touch()
            done(attacker)
        after = run_as(python, users.victim, "--use", *args, groups=(users.gid,))
        assert after.returncode == 0, after.stderr
        check_tree(Path(after.stdout.strip()), FILES)
    assert snapshot(home) == before
    assert os.stat(decoy / "lock").st_mtime_ns == touched  # no use was recorded on it


# Holds the lock file, or the SQLite database's write lock, named by its argument for a minute.
HOLD = """\
import fcntl, os, sqlite3, sys, time
if sys.argv[1].endswith(".sqlite"):
    db = sqlite3.connect(sys.argv[1], isolation_level=None)
    db.execute("BEGIN IMMEDIATE")
else:
    fd = os.open(sys.argv[1], os.O_RDONLY | os.O_CREAT, 0o664)
    fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(60)
"""


@pytest.mark.parametrize(("held", "name"), [("populate/repo.lock", "repo"), ("objects/warm/lock", "warm"),
                                           ("stage.lock", "repo"), ("index.sqlite", "repo"),
                                           ("populate/.reservations.lock", "repo")])
def test_a_member_holding_a_lock_of_a_group_cache_delays_a_use_no_longer_than_its_timeout(
    shared, users, python, recipe, held, name
):
    # A population's lock, a ready entry's lock (held exclusively: as if deleting it), the
    # staging area's, and the index's write lock: each is waited for at most --timeout.
    base, group, root = group_cache(shared, users)
    with Sleeper() as job:  # the group cache, made by a first use
        first = run_as(python, users.victim, "--use", "--keep", *group, "-n", "warm", "-d", str(base),
                       "--pid", str(job.pid), *recipe, groups=(users.gid,))
        assert first.returncode == 0, first.stderr
    holder = code_as(python, users.member, HOLD, str(root / held), groups=(users.gid,))
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        start = time.monotonic()
        size = ["--size", "1KB"] if held.endswith(".reservations.lock") else []  # (what reserves)
        result = run_as(python, users.victim, "--use", *group, "-n", name, "-d", str(base), *size,
                        "--timeout", "2", *recipe, groups=(users.gid,))
        elapsed = time.monotonic() - start
        last = clean_lines(result)[-1]
        assert result.returncode == 1, result.stderr
        if held == "populate/repo.lock":
            assert "timed out after 2 s" in last
        else:
            assert "timed out after" in last or "busy" in last, last
        assert elapsed < 2 + 10
    finally:
        holder.kill()
        holder.communicate(timeout=BOUND)


def test_a_member_holding_the_index_delays_a_release_no_longer_than_its_timeout(shared, users, python, recipe):
    base = tmp_like(shared / "tmp")
    group = ["--group", str(users.gid)]
    with Sleeper() as job:
        args = [*group, "-n", "warm", "-d", str(base), "--pid", str(job.pid), *recipe]
        assert run_as(python, users.victim, "--use", *args, groups=(users.gid,)).returncode == 0
        root = base / f".shared-cache-g{users.gid}"
        holder = code_as(python, users.member, HOLD, str(root / "index.sqlite"), groups=(users.gid,))
        try:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
            start = time.monotonic()
            result = run_as(python, users.victim, "--unuse", "--timeout", "2", *args, groups=(users.gid,))
            elapsed = time.monotonic() - start
            assert result.returncode == 1 and "busy" in clean_lines(result)[-1], result.stderr
            assert elapsed < 2 + 10
        finally:
            holder.kill()
            holder.communicate(timeout=BOUND)
        released = run_as(python, users.victim, "--unuse", *args, groups=(users.gid,))
        assert released.returncode == 0, released.stderr  # the use stayed, and is released now


# Holds a write lease (fcntl F_SETLEASE) on the file named by its argument, taken again as soon
# as nobody has the file open, for two minutes: the kernel breaks it only after
# /proc/sys/fs/lease-break-time (45 s by default), since its holder never gives it up.
LEASE = """\
import fcntl, os, signal, sys, time
signal.signal(signal.SIGIO, signal.SIG_IGN)  # (told of each open that breaks it)
fd = os.open(sys.argv[1], os.O_RDONLY)
said = False
end = time.monotonic() + 120
while time.monotonic() < end:
    try:
        if fcntl.fcntl(fd, 1025) != fcntl.F_WRLCK:  # F_GETLEASE
            fcntl.fcntl(fd, 1024, fcntl.F_WRLCK)  # F_SETLEASE
    except OSError:
        pass  # open elsewhere, or its break under way: taken again once it is over
    else:
        if not said:
            print("leased", flush=True)
            said = True
    time.sleep(0.005)
"""


# What the victim runs while the member holds the file under a lease, and its exit status: the
# release of the last use needs the index, a warm use the cache's marker and the entry's record
# of its recipe; a release takes a budget under a lease for none, as a damaged one.
UNDER_A_LEASE = {"index.sqlite": ("--unuse", 1), "cache.info": ("--use", 1), "objects/warm/meta": ("--use", 1),
                 "budget": ("--unuse", 0)}


@pytest.mark.parametrize("leased", list(UNDER_A_LEASE))
def test_a_member_holding_a_file_of_a_group_cache_under_a_lease_delays_a_command_no_longer_than_its_timeout(
    shared, users, python, recipe, leased
):
    # Its owner may take a lease on any file: SQLite's open of the index waited for the kernel to
    # break it, 45 s whatever --timeout, and the other files' opens, which must not wait, failed
    # at once with a bare "Resource temporarily unavailable" (a budget, which never fails a
    # release, failed it).
    base = tmp_like(shared / "tmp")
    group = ["--group", str(users.gid)]
    root = base / f".shared-cache-g{users.gid}"
    command, status = UNDER_A_LEASE[leased]
    with Sleeper() as job:
        args = [*group, "-n", "warm", "-d", str(base), "--pid", str(job.pid), *recipe]
        # The member makes the cache and its index, commits the repository and sets the budget.
        made = run_as(python, users.member, "--use", "--keep", "--max-size", "100MB", *args, groups=(users.gid,))
        assert made.returncode == 0, made.stderr
        assert run_as(python, users.member, "--unuse", *args, groups=(users.gid,)).returncode == 0
        assert run_as(python, users.victim, "--use", *args, groups=(users.gid,)).returncode == 0
        assert (root / leased).stat().st_uid == users.member
        holder = code_as(python, users.member, LEASE, str(root / leased), groups=(users.gid,))
        try:
            assert holder.stdout is not None and holder.stdout.readline() == "leased\n"
            start = time.monotonic()
            result = run_as(python, users.victim, command, "--timeout", "5", *args, groups=(users.gid,))
            elapsed = time.monotonic() - start
        finally:
            holder.kill()
            holder.communicate(timeout=BOUND)
        lines = clean_lines(result)
        assert result.returncode == status and len(lines) == 1, result.stderr
        if status:
            assert f"{root / leased} is held under a file lease by another process" in lines[0], lines
        else:
            assert f"{root / 'budget'} of cache {root} is damaged (held under a file lease" in lines[0], lines
        assert elapsed < 5 + 10
        if command == "--unuse" and status:  # the use stayed, and is released now
            released = run_as(python, users.victim, "--unuse", *args, groups=(users.gid,))
            assert released.returncode == 0, released.stderr


# -- what a member puts in an entry's leases ---------------------------------------------------


def test_a_member_s_entry_whose_leases_is_a_link_never_makes_another_remove_her_files(
    shared, users, python, recipe, home
):
    # A member commits the repository (kept), as any member may, then puts a link in place of
    # its leases/, which is hers: the victim's use, release, listing and gc listed the directory
    # it led to as the entry's leases, and removed each file there whose name is no live
    # owner's (her key, her notes) as a dead use, and added her lease there.
    base, group, root = group_cache(shared, users)
    before = snapshot(home)
    with Sleeper() as job:
        args = [*group, "-n", "repo", "-d", str(base), "--pid", str(job.pid), *recipe]
        made = run_as(python, users.member, "--use", "--keep", *args, groups=(users.gid,))
        assert made.returncode == 0, made.stderr
        assert run_as(python, users.member, "--unuse", *args, groups=(users.gid,)).returncode == 0
        leases = root / "objects" / "repo" / "leases"
        done(code_as(python, users.member, "import os, sys; os.rmdir(sys.argv[1]); os.symlink(sys.argv[2], sys.argv[1])",
                     str(leases), str(home / ".ssh"), groups=(users.gid,)))
        for command in (["--use", *args], ["--unuse", *args], ["list", *group, "-d", str(base)],
                        ["gc", *group, "-d", str(base)], ["--use", *args]):
            result = run_as(python, users.victim, *command, groups=(users.gid,))
            assert result.returncode in (0, 1) and len(clean_lines(result)) <= 1, (command, result.stderr)
            if result.returncode == 0 and command[0] == "--use":
                check_tree(Path(result.stdout.strip()), FILES)
    assert snapshot(home) == before


@pytest.mark.parametrize("planted", ["pid past pid_t", "subshell past pid_t", "directory"])
def test_what_a_member_plants_in_an_entry_s_leases_fails_no_use_release_or_gc(shared, users, python, recipe, planted):
    # A lease naming a pid no process can have (os.kill raised OverflowError), or a directory
    # among the leases (its removal as a dead lease raised EISDIR), failed every use, listing
    # and gc of the repository, gc's repair included, for as long as it was there.
    from sharedcache.engine.leases import boot_id, machine_id, pid_namespace

    base, group, root = group_cache(shared, users)
    with Sleeper() as job:
        args = [*group, "-n", "repo", "-d", str(base), "--pid", str(job.pid), *recipe]
        first = run_as(python, users.victim, "--use", "--keep", *args, groups=(users.gid,))
        assert first.returncode == 0, first.stderr
        owner = f"{boot_id()}:{job.pid}:1:{pid_namespace()}:{machine_id()}"
        name = {"pid past pid_t": f"{boot_id()}:99999999999:1:{pid_namespace()}:{machine_id()}.x",
                "subshell past pid_t": f"{owner}:99999999999:1.x", "directory": "junk"}[planted]
        make = "os.mkdir" if planted == "directory" else "os.mknod"
        done(code_as(python, users.member, f"import os, sys; {make}(sys.argv[1])",
                     str(root / "objects" / "repo" / "leases" / name), groups=(users.gid,)))
        for command in (["--use", *args], ["--unuse", *args], ["--unuse", *args], ["list", *group, "-d", str(base)],
                        ["gc", *group, "-d", str(base)], ["--use", *args]):
            result = run_as(python, users.victim, *command, groups=(users.gid,))
            assert result.returncode == 0 and clean_lines(result) == [], (command, result.stderr)
            if command[0] == "--use":
                check_tree(Path(result.stdout.strip()), FILES)


# How a member plants a directory of hers in objects/, which only she may move to another
# directory (a move rewrites its `..`): ARGV is the cache's directory.
IN_OBJECTS = {
    "beside the entries": "import os, sys; os.mkdir(f'{sys.argv[1]}/objects/planted', 0o755)",
    # Unreadable to the others: they cannot even open it to look for an entry's lock.
    "private, beside the entries": "import os, sys; os.mkdir(f'{sys.argv[1]}/objects/planted', 0o700)",
    # In an entry's place, its row still there: the entry renamed out of objects/ first.
    "in an entry's place": "import os, sys; os.rename(f'{sys.argv[1]}/objects/repo', f'{sys.argv[1]}/gone'); "
                           "os.mkdir(f'{sys.argv[1]}/objects/repo', 0o755)",
    "private, in an entry's place": "import os, sys; os.rename(f'{sys.argv[1]}/objects/repo', f'{sys.argv[1]}/gone'); "
                                    "os.mkdir(f'{sys.argv[1]}/objects/repo', 0o700)",
}


@pytest.mark.parametrize("how", list(IN_OBJECTS))
def test_a_directory_a_member_plants_in_objects_is_left_to_her_and_gc_repairs_the_rest(
    shared, users, python, recipe, home, how
):
    # Such a directory failed every other member's gc whole with a bare "Permission denied:
    # planted", so that gc repaired nothing else: a link she planted at a population lock stayed,
    # failing that repository's uses with a line that said gc removes it.
    with planted(shared, users, python, recipe, home, "populate/other.lock", "symlink") as (base, group, rest):
        root = base / f".shared-cache-g{users.gid}"
        planted_path = root / "objects" / ("repo" if how.endswith("in an entry's place") else "planted")
        done(code_as(python, users.member, IN_OBJECTS[how], str(root), groups=(users.gid,)))
        other = [*group, "-n", "other", *rest]
        refused = run_as(python, users.victim, "--use", *other, groups=(users.gid,))
        assert refused.returncode == 1 and "(gc removes it)" in refused.stderr, refused.stderr
        gc = run_as(python, users.victim, "gc", *group, "-d", str(base), groups=(users.gid,))
        lines = clean_lines(gc)
        assert gc.returncode == 0 and len(lines) == 1, gc.stderr
        assert str(planted_path) in lines[0] and f"uid {users.member}" in lines[0], lines
        assert "left alone: 1" in gc.stdout, gc.stdout
        assert planted_path.is_dir() and not os.path.lexists(root / "populate" / "other.lock")
        if how == "private, in an entry's place":  # (a use of that name cannot even open it)
            closed = run_as(python, users.victim, "--use", *group, "-n", "repo", *rest, groups=(users.gid,))
            assert closed.returncode == 1 and len(clean_lines(closed)) == 1, closed.stderr
            assert f"{planted_path} belongs to uid {users.member}" in closed.stderr, closed.stderr
        used_and_released(python, users, other)


def test_a_directory_a_member_plants_at_a_status_record_fails_no_use(shared, users, python, recipe, home):
    # The population writes its status record by a rename onto its name: a directory of hers
    # there failed every use of the name with "Is a directory: /proc/self/fd/4/other.json",
    # until a gc put it away; the population puts it away itself, as one at its work directory.
    with planted(shared, users, python, recipe, home, "populate/other.json", "directory of hers") as (
        _base, group, rest
    ):
        other = [*group, "-n", "other", *rest]
        used = used_and_released(python, users, other)
        assert not clean_lines(used), used.stderr


@pytest.mark.parametrize("record", [".json", ".error"])
def test_a_directory_a_member_plants_at_a_population_record_is_put_away_by_gc(
    shared, users, python, recipe, home, record
):
    # gc unlinks a population's records with its other leftovers: a directory of hers at one
    # failed every other member's gc with "Is a directory: /proc/self/fd/7/other.json", and
    # nothing after it (the rest of populate/, stale links) was cleaned.
    with planted(shared, users, python, recipe, home, f"populate/other{record}", "directory of hers") as (
        base, group, rest
    ):
        root = base / f".shared-cache-g{users.gid}"
        gc = run_as(python, users.victim, "gc", *group, "-d", str(base), groups=(users.gid,))
        assert gc.returncode == 0 and not clean_lines(gc), gc.stderr
        assert not os.path.lexists(root / "populate" / f"other{record}")
        other = [*group, "-n", "other", *rest]
        used_and_released(python, users, other)


def test_a_directory_a_member_plants_in_stage_is_left_to_her_and_named_by_gc(shared, users, python, recipe, home):
    # Such a directory, which no store locks, is taken for an abandoned stage: gc passed over it
    # without a word, on every run, while it said what it leaves in objects/.
    with planted(shared, users, python, recipe, home, "stage/planted", "directory of hers") as (base, group, rest):
        root = base / f".shared-cache-g{users.gid}"
        gc = run_as(python, users.victim, "gc", *group, "-d", str(base), groups=(users.gid,))
        lines = clean_lines(gc)
        assert gc.returncode == 0 and len(lines) == 1, gc.stderr
        assert str(root / "stage" / "planted") in lines[0] and f"uid {users.member}" in lines[0], lines
        assert "left alone: 1" in gc.stdout, gc.stdout
        other = [*group, "-n", "other", *rest]
        again = run_as(python, users.victim, "--use", *other, groups=(users.gid,))
        assert again.returncode == 0, again.stderr
        check_tree(Path(again.stdout.strip()), FILES)


@pytest.mark.parametrize("kind", ["file", "fifo", "symlink"])
def test_a_member_planting_a_non_directory_at_an_entry_s_name_fails_no_use_of_it(
    shared, users, python, recipe, home, kind
):
    # The commit renames the staging directory onto the entry's name, which fails with "Not a
    # directory" on anything but a directory: every use of the name made the data again and
    # failed at its commit with a bare "Not a directory: <staging id>", until a gc.
    with planted(shared, users, python, recipe, home, "objects/other", kind) as (base, group, rest):
        entry = base / f".shared-cache-g{users.gid}" / "objects" / "other"
        other = [*group, "-n", "other", *rest]
        used = run_as(python, users.victim, "--use", *other, groups=(users.gid,))
        assert used.returncode == 0 and not clean_lines(used), used.stderr
        check_tree(Path(used.stdout.strip()), FILES)
        assert not entry.is_symlink() and (entry / "lock").is_file()
        released = run_as(python, users.victim, "--unuse", *other, groups=(users.gid,))
        assert released.returncode == 0 and not clean_lines(released), released.stderr


# What a member plants at the marker, and at the trash where a repair would move it: (path,
# kind) for PLANT, in order.
AT_THE_MARKER = {
    # Only she may move it to another directory (a move rewrites its `..`).
    "directory of hers": [("cache.info", "directory of hers")],
    "fifo, a file at trash": [("cache.info", "fifo"), ("trash", "file")],
    # The link leads into the victim's home, where nothing may be moved.
    "fifo, a link at trash": [("cache.info", "fifo"), ("trash", "symlink")],
    "directory of hers, a link at trash": [("cache.info", "directory of hers"), ("trash", "symlink")],
}


@pytest.mark.parametrize("plants", list(AT_THE_MARKER))
def test_a_member_planting_at_the_marker_leaves_it_damaged_until_gc_repairs_it(
    shared, users, python, recipe, home, plants
):
    # gc moved what was at cache.info into trash/ by a path: a directory of hers could not go
    # there ("Permission denied: cache.info"), nor anything while trash was a file ("Not a
    # directory: cache.info"), so every use said to run gc, and gc failed, for good; and a link
    # at trash took her FIFO into the victim's home.
    (first_path, first_kind), *more = AT_THE_MARKER[plants]
    with planted(shared, users, python, recipe, home, first_path, first_kind) as (base, group, rest):
        root = base / f".shared-cache-g{users.gid}"
        for path, kind in more:
            done(code_as(python, users.member, PLANT, str(root), path, kind, str(home), groups=(users.gid,)))
        other = [*group, "-n", "other", *rest]
        refused = run_as(python, users.victim, "--use", *other, groups=(users.gid,))
        lines = clean_lines(refused)
        assert refused.returncode == 1 and len(lines) == 1 and "run gc to repair it" in lines[0], refused.stderr
        gc = run_as(python, users.victim, "gc", *group, "-d", str(base), groups=(users.gid,))
        assert gc.returncode == 0 and not clean_lines(gc), gc.stderr
        assert (root / "cache.info").read_bytes() == b"shared-cache fscache 3\n"
        assert (root / "trash").is_dir() and not (root / "trash").is_symlink()
        used_and_released(python, users, other)


# Run by the member in her directory set aside in objects/: a commit marker naming it, over data.
FORGE_AN_ENTRY = """\
import json, os, sys, time
aside = sys.argv[1]
os.mkdir(os.path.join(aside, "data"))
with open(os.path.join(aside, "entry.json"), "w") as f:
    json.dump({"name": os.path.basename(aside), "size": 1, "created": time.time()}, f)
"""


def test_a_member_planting_a_directory_at_an_entry_s_name_fails_no_use_of_it(
    shared, users, python, recipe, home, origin
):
    # A directory of hers cannot move to another directory (only she may rewrite its `..`): every
    # use of the name downloaded the data and failed at its commit with "cannot move
    # <root>/objects/other into the trash: Permission denied", until she removed it.
    with planted(shared, users, python, recipe, home, "objects/other", "directory of hers") as (base, group, rest):
        objects = base / f".shared-cache-g{users.gid}" / "objects"
        url = origin.add("/data.tar.gz", Path(recipe[0].removeprefix("file:")).read_bytes())
        other = [*group, "-n", "other", *rest[:-len(recipe)], f"http:{url}", *recipe[1:]]
        used = run_as(python, users.victim, "--use", *other, groups=(users.gid,))
        assert used.returncode == 0 and not clean_lines(used), used.stderr
        assert origin.stats("/data.tar.gz").gets == 1
        check_tree(Path(used.stdout.strip()), FILES)
        entry = objects / "other"
        assert entry.stat().st_uid == users.victim and (entry / "lock").is_file() and not (entry / "hers").exists()
        aside, = (path for path in objects.iterdir() if path.name.startswith("."))
        assert aside.stat().st_uid == users.member and (aside / "hers").is_file()
        released = run_as(python, users.victim, "--unuse", *other, groups=(users.gid,))
        assert released.returncode == 0 and not clean_lines(released), released.stderr
        # Her directory set aside is never an entry, whatever she writes in it.
        done(code_as(python, users.member, FORGE_AN_ENTRY, str(aside), groups=(users.gid,)))
        gc = run_as(python, users.victim, "gc", *group, "-d", str(base), groups=(users.gid,))
        lines = clean_lines(gc)
        assert gc.returncode == 0 and len(lines) == 1, gc.stderr
        assert str(aside) in lines[0] and f"uid {users.member}" in lines[0], lines
        assert "left alone: 1" in gc.stdout, gc.stdout
        listed = run_as(python, users.victim, "list", *group, "-d", str(base), groups=(users.gid,))
        assert listed.returncode == 0 and aside.name not in listed.stdout, listed.stdout
        # Her own gc takes it away.
        hers = run_as(python, users.member, "gc", *group, "-d", str(base), groups=(users.gid,))
        assert hers.returncode == 0 and not clean_lines(hers), hers.stderr
        assert not os.path.lexists(aside)
