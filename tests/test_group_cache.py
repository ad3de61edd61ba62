"""A base directory shared by a group: two real users, each with a umask that shares nothing,
share one repository and one download, and either can delete what the other created."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from scutil import Sleeper, make_tarball, sample_files, sc_env

ALICE, BOB, CAROL, GROUP = 41001, 41002, 41003, 41500
FILES = sample_files(n=5, size=20_000)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")


@pytest.fixture
def shared() -> Iterator[Path]:
    """A world-writable sticky directory, like /tmp, that every test user can reach."""
    path = Path(tempfile.mkdtemp(prefix="sc-group-", dir="/tmp"))
    path.chmod(0o1777)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _interpreter() -> tuple[str, dict[str, str]]:
    """A Python the test users may run, and the environment that finds the project with it.

    This interpreter may live in a directory only root can enter (a home directory); a system
    Python of the same version then runs the project from its source and the venv's packages.
    """
    import sharedcache
    import urllib3

    paths = os.pathsep.join([str(Path(sharedcache.__file__).parents[1]), str(Path(urllib3.__file__).parents[1])])
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in (sys.executable, shutil.which(version, path="/usr/local/bin:/usr/bin:/bin")):
        if candidate is None:
            continue
        try:
            subprocess.run([candidate, "-c", "import sharedcache"], env=sc_env(PYTHONPATH=paths),
                           user=ALICE, group=GROUP, check=True, capture_output=True, timeout=30)
        except (OSError, subprocess.CalledProcessError):
            continue
        return candidate, sc_env(PYTHONPATH=paths)
    pytest.skip(f"no {version} that another user may run")


@pytest.fixture(scope="module")
def python() -> tuple[str, dict[str, str]]:
    return _interpreter()


def as_user(python, uid: int, *args: str, groups: tuple[int, ...] = (GROUP,)) -> subprocess.CompletedProcess:  # type: ignore[no-untyped-def]
    interpreter, env = python
    return subprocess.run([interpreter, "-m", "sharedcache", *args], capture_output=True, text=True,
                          timeout=60, env=env, user=uid, group=groups[0] if groups else uid,
                          extra_groups=list(groups), umask=0o077)


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
    with Sleeper() as alice_job, Sleeper() as bob_job:
        first = as_user(python, ALICE, "--use", "--group", str(GROUP), "--pid", str(alice_job.pid), *words)
        assert first.returncode == 0, first.stderr
        second = as_user(python, BOB, "--use", "--pid", str(bob_job.pid), *words)
        assert second.returncode == 0, second.stderr
        assert first.stdout == second.stdout
        assert origin.stats("/data.tar.gz").gets == 1, "bob shared alice's download"
        path = Path(first.stdout.strip())
        assert read_as(python, BOB, path).returncode == 0

        control = base / ".shared-cache"
        st = control.stat()
        assert st.st_gid == GROUP and st.st_mode & stat.S_ISGID and st.st_mode & 0o070 == 0o070
        for item in control.rglob("*"):
            if item.is_symlink() or ("objects" in item.parts and "data" in item.parts):
                continue
            mode = item.stat().st_mode
            assert item.stat().st_gid == GROUP, item
            assert mode & 0o060 == 0o060, (item, oct(mode))  # whatever alice's umask (077)
        # An outsider of the group is refused, and told why.
        outsider = as_user(python, CAROL, "--use", *words, groups=())
        assert outsider.returncode == 1 and "uid" in outsider.stderr

        # Alice leaves first; bob's release is the last and deletes what alice created.
        assert as_user(python, ALICE, "--unuse", "--pid", str(alice_job.pid), *words).returncode == 0
        assert path.exists()
        last = as_user(python, BOB, "--unuse", "--pid", str(bob_job.pid), *words)
        assert last.returncode == 0, last.stderr
        assert not (control / "objects" / "repo").exists()
        assert list((control / "trash").iterdir()) == []


def test_a_cache_created_in_a_setgid_directory_is_a_group_cache(shared, python, tmp_path):
    tarball = shared / "data.tar.gz"
    md5 = make_tarball(tarball, FILES)
    base = shared / "project"
    base.mkdir()
    os.chown(base, 0, GROUP)
    base.chmod(0o2775)  # the group's project directory: setgid, writable by the group
    words = ["-n", "repo", "-d", str(base), f"file:{tarball}", f"md5:{md5}", "tar"]
    with Sleeper() as alice_job, Sleeper() as bob_job:
        first = as_user(python, ALICE, "--use", "--pid", str(alice_job.pid), *words)
        assert first.returncode == 0, first.stderr
        second = as_user(python, BOB, "--use", "--pid", str(bob_job.pid), *words)
        assert second.returncode == 0, second.stderr
        assert first.stdout == second.stdout
        control = base / ".shared-cache"
        assert control.stat().st_gid == GROUP and control.stat().st_mode & 0o2070 == 0o2070
        assert read_as(python, BOB, Path(second.stdout.strip())).returncode == 0
