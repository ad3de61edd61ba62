"""A cleaner of the system's that deletes old files (systemd-tmpfiles, as Red Hat family systems
set it for /tmp and /var/tmp) deletes a cache's files by age, a live job's among them: ``sc
config`` says where that comes from and the line that keeps the caches, and that line, given to
the real systemd-tmpfiles, does keep them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import TextIO

import pytest
from scutil import SC, Sleeper, make_tarball, sc, sc_env, user_dir

from sharedcache.config.cleaners import TMPFILES_DIRECTORIES, cleaning_of


def test_the_tmpfiles_d_lines_are_read_as_systemd_tmpfiles_reads_them(tmp_path):
    etc, lib = tmp_path / "etc", tmp_path / "lib"
    etc.mkdir()
    lib.mkdir()
    (lib / "tmp.conf").write_text("# comment\nD /tmp 1777 root root -\nq- /var/tmp 1777 root root ~30d\n"
                                  "d /home/%u/cache 0700 - - 1d\nq! /srv 1777 root root 1d\n")
    (lib / "scratch.conf").write_text("e /scratch - - - 7d\n")
    directories = (str(etc), str(lib))
    assert cleaning_of("/tmp/.shared-cache-0", directories) is None  # no age
    assert cleaning_of("/var/tmp/.shared-cache-5", directories) == f"{lib}/tmp.conf:3: files older than 30d"
    assert cleaning_of("/scratch/site/.shared-cache-g7", directories) == f"{lib}/scratch.conf:1: files older than 7d"
    assert cleaning_of("/home/u/cache/.shared-cache-0", directories) is None  # (a specifier: passed over)
    assert cleaning_of("/srv/.shared-cache-0", directories) is None  # (for the boot only: passed over)
    # A file of /etc hides the one of the same name; an x line keeps a cache, or what is above it
    # below the cleaned directory; an X line keeps a directory but not what is in it.
    (etc / "tmp.conf").write_text("q /tmp 1777 root root 10d\n")
    assert cleaning_of("/tmp/.shared-cache-0", directories) == f"{etc}/tmp.conf:1: files older than 10d"
    assert cleaning_of("/var/tmp/.shared-cache-5", directories) is None
    (etc / "keep.conf").write_text("x /tmp/.shared-cache-*\nX /scratch/site\n")
    assert cleaning_of("/tmp/.shared-cache-0", directories) is None
    assert cleaning_of("/scratch/site/.shared-cache-g7", directories) == f"{lib}/scratch.conf:1: files older than 7d"
    (etc / "keep.conf").write_text("x /scratch/site\n")
    assert cleaning_of("/scratch/site/.shared-cache-g7", directories) is None


def test_a_tmpfiles_d_line_is_named_by_the_number_editors_give_it(tmp_path):
    # A form feed, a vertical tab, U+0085 or U+2028 ended a line too: the line named was a later one.
    (tmp_path / "tmp.conf").write_text("# site\n\f\v\n# \x85 \u2028\nq /tmp 1777 root root 10d\r\n", encoding="utf-8")
    assert cleaning_of("/tmp/.shared-cache-0", (str(tmp_path),)) == f"{tmp_path}/tmp.conf:4: files older than 10d"


def test_a_fifo_among_the_tmpfiles_d_files_is_passed_over_without_waiting(tmp_path):
    # It was opened blocking: sc config, and the first use that made a cache, waited for a writer
    # for good.  (In a process of its own, that a hang is ended by the timeout.)
    os.mkfifo(tmp_path / "a.conf")
    (tmp_path / "tmp.conf").write_text("q /tmp 1777 root root 10d\n")
    program = ("import sys\nfrom sharedcache.config.cleaners import cleaning_of\n"
               "print(cleaning_of('/tmp/.shared-cache-0', (sys.argv[1],)))")
    result = subprocess.run([sys.executable, "-c", program, str(tmp_path)], capture_output=True, text=True,
                            timeout=30, env=sc_env())
    assert (result.returncode, result.stdout) == (0, f"{tmp_path}/tmp.conf:1: files older than 10d\n"), result.stderr


def needs_root_and(*tools: str) -> None:
    if os.geteuid() != 0 or not all(shutil.which(tool) for tool in ("unshare", *tools)):
        pytest.skip(f"needs root, unshare and {', '.join(tools) or 'nothing else'}: a mount namespace")


def with_tmpfiles_d(instead: dict[str, Path], empty: Path) -> list[str]:
    """The prefix of a command run in a mount namespace where each directory systemd-tmpfiles
    reads is replaced by one of the test's: ``instead``'s, else ``empty``."""
    binds = " && ".join(f"mount --bind {instead.get(directory, empty)} {directory}"
                        for directory in TMPFILES_DIRECTORIES if os.path.isdir(directory))
    return ["unshare", "--mount", "sh", "-c", f'{binds} && exec "$@"', "sh"]


def test_sc_config_says_which_base_directory_is_cleaned_by_age_and_the_line_that_keeps_it(tmp_path):
    # Each directory systemd-tmpfiles reads is replaced, in a mount namespace, by one of the test's.
    needs_root_and()
    shipped, site = tmp_path / "shipped", tmp_path / "site"
    shipped.mkdir()
    site.mkdir()
    (shipped / "tmp.conf").write_text("q /tmp 1777 root root 10d\nq /var/tmp 1777 root root 30d\n")
    empty = tmp_path / "empty"
    empty.mkdir()
    in_test_tmpfiles_d = with_tmpfiles_d({"/etc/tmpfiles.d": site, "/usr/lib/tmpfiles.d": shipped}, empty)

    def config(stderr: int | TextIO = subprocess.PIPE) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*in_test_tmpfiles_d, *SC, "config", "-d", "/tmp:/var/tmp:/dev/shm"],
                              stdout=subprocess.PIPE, stderr=stderr, text=True, timeout=60, env=sc_env())

    shown = config()
    assert shown.returncode == 0 and "directories = /tmp:/var/tmp:/dev/shm" in shown.stdout, shown.stderr
    assert shown.stderr.splitlines() == [
        f"sc: warning: systemd-tmpfiles deletes the files of the caches in {base} by age (/usr/lib/tmpfiles.d/tmp.conf:"
        f"{line}: files older than {age}), a live job's too; a site keeps them with the line "
        f"'x {base}/.shared-cache-*' in a file of /etc/tmpfiles.d, or sc is given other base directories"
        for base, line, age in (("/tmp", 1, "10d"), ("/var/tmp", 2, "30d"))]
    # A standard error that cannot take the warnings (a full disk under 2>>job.log) loses them,
    # not the status: the write's error escaped sc, exit status 1.
    with open("/dev/full", "w") as full:
        assert config(stderr=full).returncode == 0
    (site / "shared-cache.conf").write_text("x /tmp/.shared-cache-*\nx /var/tmp/.shared-cache-*\n")
    kept = config()
    assert (kept.returncode, kept.stderr) == (0, "")


def test_the_first_use_that_makes_a_cache_where_it_is_cleaned_by_age_says_so_once(tmp_path):
    # A user who never runs sc config is told as well, once: by the command that makes the cache.
    needs_root_and()
    shipped, site, empty = tmp_path / "shipped", tmp_path / "site", tmp_path / "empty"
    for directory in (shipped, site, empty):
        directory.mkdir()
    archive = tmp_path / "data.tar.gz"
    make_tarball(archive, {"d/a.txt": b"a\n"})
    in_test_tmpfiles_d = with_tmpfiles_d({"/etc/tmpfiles.d": site, "/usr/lib/tmpfiles.d": shipped}, empty)

    def use(base: Path, *options: str) -> str:
        with Sleeper() as job:
            used = subprocess.run([*in_test_tmpfiles_d, *SC, "--use", *options, "-d", str(base), "-n", "r", "--pid",
                                   str(job.pid), f"file:{archive}", "tar"], capture_output=True, text=True,
                                  timeout=60, env=sc_env())
        assert used.returncode == 0, used.stderr
        return used.stderr

    bases = [tmp_path / f"base-{n}" for n in range(3)]
    (shipped / "scratch.conf").write_text("".join(f"q {base} 1777 root root 10d\n" for base in bases))
    for base in bases:
        base.mkdir(mode=0o1777)
    assert use(bases[0]) == (
        f"sc: warning: systemd-tmpfiles deletes the files of the caches in {bases[0]} by age (/usr/lib/tmpfiles.d/scratch.conf:1: "
        f"files older than 10d), a live job's too; a site keeps them with the line '"
        f"x {bases[0]}/.shared-cache-*' in a file of /etc/tmpfiles.d, or sc is given other base directories\n")
    assert use(bases[0]) == "", "said once: as the cache was made"
    assert use(bases[1], "-q") == ""
    (site / "shared-cache.conf").write_text(f"x {bases[2]}/.shared-cache-*\n")
    assert use(bases[2]) == ""


def test_the_line_sc_gives_keeps_a_live_job_s_repository_from_systemd_tmpfiles(tmp_path):
    # The age is 2 seconds instead of 10 days: without the line, the repository a live job holds,
    # its lease and the cache's index go; with it, nothing of them.
    needs_root_and("systemd-tmpfiles")
    archive = tmp_path / "data.tar.gz"
    md5 = make_tarball(archive, {"d/a.txt": b"a\n", "d/e/b.txt": b"b\n"})
    for excluded in (False, True):
        base = tmp_path / f"base-{excluded}"
        base.mkdir(mode=0o1777)
        config = tmp_path / f"clean-{excluded}.conf"
        config.write_text(f"q {base} 1777 root root 2s\n" + (f"x {base}/.shared-cache-*\n" if excluded else ""))
        with Sleeper() as job:
            used = sc("--use", "-d", str(base), "-n", "r", "--pid", str(job.pid), f"file:{archive}", f"md5:{md5}",
                      "tar")
            assert used.returncode == 0, used.stderr
            path = Path(used.stdout.strip())
            time.sleep(3)
            cleaned = subprocess.run(["systemd-tmpfiles", "--clean", str(config)], capture_output=True, text=True,
                                     timeout=60)
            assert cleaned.returncode == 0, cleaned.stderr
            assert sc("gc", "-d", str(base)).returncode == 0
            left = [p.name for p in user_dir(base).rglob("*")] if user_dir(base).exists() else []
            if excluded:
                assert (path / "d" / "e" / "b.txt").read_bytes() == b"b\n"
                # (the marker of an entry for this boot: entry.<boot id>.json)
                assert "index.sqlite" in left and any(name.startswith("entry.") for name in left), left
            else:
                assert not (path / "d" / "e" / "b.txt").exists(), "the cleaning the line prevents did not happen"


def test_a_group_cache_is_said_to_be_cleaned_when_the_member_s_own_directory_is(tmp_path):
    # The group's directory made by root, with the tmpfiles.d line that makes it again at boot
    # (docs/guarantees.md), which keeps that directory from an age cleaning of the base, not the
    # member's own that holds the paths a job is given (links into the group's): sc looked at the
    # group's alone, and said nothing as systemd-tmpfiles deleted a live job's path.  The age is 2
    # seconds; the line sc gives keeps both.
    needs_root_and("systemd-tmpfiles")
    group = "41600"  # (root is given it as a supplementary group: a member)
    archive = tmp_path / "data.tar.gz"
    md5 = make_tarball(archive, {"d/a.txt": b"a\n"})
    empty = tmp_path / "empty"
    empty.mkdir()
    for excluded in (False, True):
        base, site = tmp_path / f"base-{excluded}", tmp_path / f"site-{excluded}"
        base.mkdir()
        base.chmod(0o1777)
        control = base / f".shared-cache-g{group}"
        control.mkdir()
        os.chown(control, 0, int(group))
        control.chmod(0o2770)
        site.mkdir()
        (site / "site.conf").write_text(f"q {base} 1777 root root 2s\nd {control} 2770 root {group} -\n"
                                        + (f"x {base}/.shared-cache-*\n" if excluded else ""))
        warning = "" if excluded else (
            f"sc: warning: systemd-tmpfiles deletes the files of the caches in {base} by age (/etc/tmpfiles.d/"
            f"site.conf:1: files older than 2s), a live job's too; a site keeps them with the line "
            f"'x {base}/.shared-cache-*' in a file of /etc/tmpfiles.d, or sc is given other base directories\n")
        in_site = [*with_tmpfiles_d({"/etc/tmpfiles.d": site}, empty), *SC]
        member = {"capture_output": True, "text": True, "timeout": 60, "env": sc_env(), "extra_groups": [int(group)]}
        config = subprocess.run([*in_site, "config", "--group", group, "-d", str(base)], **member)
        assert (config.returncode, config.stderr) == (0, warning)
        with Sleeper() as job:
            used = subprocess.run([*in_site, "--use", "--group", group, "-d", str(base), "-n", "r", "--pid",
                                   str(job.pid), f"file:{archive}", f"md5:{md5}", "tar"], **member)
            assert (used.returncode, used.stderr) == (0, warning), used.stderr
            path = Path(used.stdout.strip())
            assert path.parent == user_dir(base) and (path / "d" / "a.txt").exists()
            time.sleep(3)  # older than the age
            cleaned = subprocess.run(["systemd-tmpfiles", "--clean", str(site / "site.conf")], capture_output=True,
                                     text=True, timeout=60)
            assert cleaned.returncode == 0, cleaned.stderr
            assert (path / "d" / "a.txt").exists() == excluded
            assert (control / "cache.info").exists(), "the line of the group's directory keeps it"


#: Configurations (BASE being the base directory, PARENT the one above it, CACHE the cache
#: directory), and whether systemd-tmpfiles keeps the cache's files, 2 seconds old.  Before, sc
#: read globs as Python's fnmatch does (a ``*`` matching a slash or a leading dot), an ``X`` line
#: or one at or above the cleaned directory as keeping the cache, a line for the boot (``!``) as
#: cleaning, and a cache directory's own line with an age as cleaning nothing.
AGED = "q BASE 1777 root root 2s\n"
TMPFILES_CASES = {
    AGED: False,
    AGED + "x BASE/.shared-cache-*": True,
    AGED + "x BASE/*": False,
    AGED + "x BASE/.*": True,
    AGED + "x BASE/?shared-cache-*": False,
    AGED + "x BASE/[.]shared-cache-*": False,
    AGED + "x BASE/*cache*": False,
    AGED + "x PARENT/*/.shared-cache-*": True,
    AGED + "x PARENT*/.shared-cache-*": False,
    AGED + "x BASE/.shared-cache-[!x]": True,
    AGED + "x CACHE/": True,
    AGED + "x BASE": False,
    AGED + "x PARENT/*": False,
    AGED + "x /*": False,
    AGED + "X CACHE": False,
    AGED + "X BASE/.shared-cache-*": False,
    AGED + "d CACHE 0700 root root -": True,
    AGED + "z CACHE": True,
    AGED + "q! CACHE 0700 root root -": False,
    "q! BASE 1777 root root 2s": True,
    "e CACHE - - - 2s": False,
    "D PARENT - - - 2s\nx BASE": True,
}


def test_what_cleans_a_cache_is_what_systemd_tmpfiles_cleans(tmp_path):
    needs_root_and("systemd-tmpfiles")
    cases = []
    for number, (lines, kept) in enumerate(TMPFILES_CASES.items()):
        parent = tmp_path / f"case{number}"
        base, configs = parent / "base", parent / "tmpfiles.d"
        cache = base / ".shared-cache-0"
        (cache / "objects").mkdir(parents=True)
        (cache / "objects" / "data").write_text("data\n")
        configs.mkdir()
        text = lines.replace("CACHE", str(cache)).replace("BASE", str(base)).replace("PARENT", str(parent))
        (configs / "site.conf").write_text(f"{text}\n")
        cases.append((lines, kept, cache, configs))
    time.sleep(3)  # older than the age
    for lines, kept, cache, configs in cases:
        said = cleaning_of(str(cache), (str(configs),))
        assert (said is None) == kept, (lines, said)
        cleaned = subprocess.run(["systemd-tmpfiles", "--clean", str(configs / "site.conf")], capture_output=True,
                                 text=True, timeout=60)
        assert cleaned.returncode == 0, cleaned.stderr
        assert (cache / "objects" / "data").exists() == kept, lines
