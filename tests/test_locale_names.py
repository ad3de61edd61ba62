"""Names not ASCII under locales whose file-system encodings differ: one repository whatever the
locale, or a clear refusal that changes nothing; and gc never removes a directory in use."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from scutil import SC, Sleeper, control, make_tarball, sc, sc_env

FILES = {"data/a.txt": b"hello\n"}
NAME = "données"


@pytest.fixture(scope="module")
def latin1_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment of a process under an ISO-8859-1 locale (Python's file-system encoding:
    latin-1), built with localedef into a directory of the test's own."""
    locales = tmp_path_factory.mktemp("locales")
    localedef = shutil.which("localedef")
    if localedef is None:
        pytest.skip("no localedef (libc-bin) to build an ISO-8859-1 locale with")
    made = subprocess.run([localedef, "-i", "en_US", "-f", "ISO-8859-1", str(locales / "en_US.ISO-8859-1")],
                          capture_output=True, text=True, timeout=120)
    if not (locales / "en_US.ISO-8859-1").is_dir():
        pytest.skip(f"cannot build an ISO-8859-1 locale: {made.stderr.strip() or made.returncode}")
    env = sc_env(LOCPATH=str(locales), LC_ALL="en_US.ISO-8859-1", PYTHONUTF8="0")
    check = subprocess.run(["python3", "-c", "import sys; print(sys.getfilesystemencoding())"],
                           capture_output=True, text=True, env=env, timeout=30)
    if check.stdout.strip() != "iso8859-1":
        pytest.skip(f"the ISO-8859-1 locale built is not Python's: its encoding is {check.stdout.strip()!r}")
    return env


def utf8_env() -> dict[str, str]:
    return sc_env(LC_ALL="C.UTF-8", PYTHONUTF8="0")


def recipe(tmp_path: Path) -> list[str]:
    path = tmp_path / "origin" / "data.tar.gz"
    path.parent.mkdir()
    return [f"file:{path}", f"md5:{make_tarball(path, FILES)}", "tar"]


def test_a_use_under_utf8_outlives_every_command_under_latin1(tmp_path: Path, latin1_env: dict[str, str]) -> None:
    base = tmp_path / "base"
    base.mkdir()
    words = recipe(tmp_path)
    typed = NAME.encode("latin-1")  # what a user types under the Latin-1 locale
    with Sleeper() as job:
        used = sc("--use", "--pid", str(job.pid), "-d", str(base), "-n", NAME, *words, env=utf8_env())
        assert used.returncode == 0, used.stderr
        path = Path(used.stdout.strip())
        assert (path / "data/a.txt").read_bytes() == b"hello\n"

        gc = sc("gc", "-d", str(base), env=latin1_env, errors="replace")
        assert gc.returncode == 0, gc.stderr
        assert "left alone 1 repositories whose names are not ASCII" in gc.stderr
        assert "removed" not in gc.stdout and "dropped" not in gc.stdout, gc.stdout
        listed = sc("list", "-d", str(base), env=latin1_env, errors="replace")
        assert listed.returncode == 0 and "left out 1 repositories" in listed.stderr, listed.stderr
        for args in (["--use", "-d", str(base), "-n", typed, *words],
                     ["--unuse", "--pid", str(job.pid), "-d", str(base), "-n", typed, *words]):
            refused = subprocess.run([*SC, *args], capture_output=True, text=True, errors="replace",
                                     env=latin1_env, timeout=60)
            assert refused.returncode == 2, refused.stderr
            assert "is not ASCII, and this locale writes file names in iso8859-1" in refused.stderr
            assert "PYTHONUTF8=1" in refused.stderr

        assert (path / "data/a.txt").read_bytes() == b"hello\n"
        (row,) = [line for line in sc("list", "-d", str(base), env=utf8_env()).stdout.splitlines()[1:]]
        assert row.split()[0] == NAME and str(job.pid) in row.split()
        assert sorted(os.listdir(control(base) / "objects")) == [NAME]
        # The advice given works: the same locale in Python's UTF-8 mode names the same repository.
        again = sc("--use", "--pid", str(job.pid), "-d", str(base), "-n", NAME, *words,
                   env={**latin1_env, "PYTHONUTF8": "1"})
        assert again.returncode == 0 and again.stdout.strip() == str(path), again.stderr


def test_under_latin1_a_name_or_word_not_ascii_is_refused_and_nothing_made(
        tmp_path: Path, latin1_env: dict[str, str]) -> None:
    base = tmp_path / "base"
    base.mkdir()
    words = recipe(tmp_path)
    odd = tmp_path / "origin" / "été.tar.gz"
    os.link(words[0].partition(":")[2], odd)
    for args in (["-n", NAME.encode("latin-1"), *words],  # a name given
                 [f"file:{odd}".encode(), words[1], "tar"]):  # a name and identity made of a path
        refused = subprocess.run([*SC, "--use", "-d", str(base), *args], capture_output=True, text=True,
                                 errors="replace", env=latin1_env, timeout=60)
        assert refused.returncode == 2, refused.stderr
        assert "is not ASCII, and this locale writes file names in iso8859-1" in refused.stderr
    assert not (control(base) / "objects").exists() or os.listdir(control(base) / "objects") == []


def test_gc_leaves_a_directory_in_use_whatever_its_name(tmp_path: Path) -> None:
    """A directory whose marker names another name (the same name written as other bytes by a
    process under another locale) is no entry to adopt; gc removes it only once nobody uses it."""
    base = tmp_path / "base"
    base.mkdir()
    words = recipe(tmp_path)
    objects = control(base) / "objects"
    with Sleeper() as job:
        used = sc("--use", "--pid", str(job.pid), "-d", str(base), "-n", "a", *words)
        assert used.returncode == 0, used.stderr
        os.rename(objects / "a", objects / "b")
        gc = sc("gc", "-d", str(base))
        assert gc.returncode == 0, gc.stderr
        assert "orphans removed" not in gc.stdout, gc.stdout
        assert (objects / "b" / "data" / "data" / "a.txt").read_bytes() == b"hello\n"
    gc = sc("gc", "-d", str(base))
    assert gc.returncode == 0 and "orphans removed: 1" in gc.stdout, (gc.stdout, gc.stderr)
    assert not (objects / "b").exists()

