"""Uses belong to jobs: the default owner of a use survives the shell idioms users write
(command substitution with redirects and pipes, ``timeout`` and ``time`` wrappers, ``bash -c``
with sc last, dash, login shells, background subshells, a job shell that is PID 1 of a PID
namespace), and ``sc --unuse`` written the same way finds the use.

Every job is a real shell running the real ``sc``: it takes a use, lets the subshells and
wrappers that ran sc end, has the repository touched (``sc gc``: it reclaims dead leases and
deletes unused repositories), checks its data is still there, then releases the use the same
way and the test checks that this deleted the repository (the release found the use).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scutil import SRC, control, make_tarball, pause_at, sc, sc_env, stop_process, user_dir, wait_for

BIN = os.path.dirname(sys.executable)

# (use, unuse): shell text; $R holds the recipe and options, $p gets the path.
IDIOMS = {
    "plain substitution": ('p=$(sc --use $R)', 'sc --unuse $R'),
    "substitution with redirect": ('p=$(sc --use $R 2>/dev/null)', 'x=$(sc --unuse $R 2>&1)'),
    "substitution of a pipe": ('p=$(sc --use $R 2>&1 | tail -1)', 'sc --unuse $R 2>&1 | cat'),
    "timeout": ('p=$(timeout 60 sc --use $R 2>/dev/null)', 'timeout 60 sc --unuse $R'),
    "time": ('p=$(/usr/bin/time -o /dev/null sc --use $R)', '/usr/bin/time -o /dev/null sc --unuse $R'),
    "nested substitution": ('p=$(echo "$(sc --use $R 2>/dev/null)")', 'echo "$(sc --unuse $R 2>&1)"'),
}

JOB = """
R="{recipe}"
{use}
[ -f "$p/data.txt" ] || {{ echo "no data at '$p'" >&2; exit 3; }}
sc gc -d {base} >/dev/null || exit 4
[ -f "$p/data.txt" ] || {{ echo "data deleted under the job" >&2; exit 5; }}
{unuse}
"""


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, str]:
    base = tmp_path / "base"
    base.mkdir()
    origin = tmp_path / "data.tgz"
    make_tarball(origin, {"data.txt": b"job data\n"})
    return base, f"-d {base} -n repo file:{origin} tar"


def run_job(script: str, shell: list[str], *, prefix: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    script = f'PATH="{BIN}:$PATH"\n{script}'  # (a login shell sets PATH afresh)
    return subprocess.run([*(prefix or []), *shell, "-c", script], capture_output=True, text=True,
                          timeout=120, env=sc_env())


def assert_job_done(result: subprocess.CompletedProcess[str], base: Path) -> None:
    assert result.returncode == 0, result.stderr
    assert not (user_dir(base) / "repo").exists(), "the release did not find the use"
    assert not (control(base) / "objects" / "repo").exists()


@pytest.mark.parametrize("shell", [["bash"], ["bash", "-l"], ["dash"]])
@pytest.mark.parametrize("idiom", sorted(IDIOMS))
def test_a_use_belongs_to_the_job_whatever_ran_sc(setup, shell, idiom):
    base, recipe = setup
    use, unuse = IDIOMS[idiom]
    result = run_job(JOB.format(recipe=recipe, base=base, use=use, unuse=unuse), shell)
    assert_job_done(result, base)


def test_bash_c_with_sc_last_releases_the_use_its_shell_took(setup):
    """bash execs the last command of ``bash -c``: sc is then the shell that took the use."""
    base, recipe = setup
    inner = JOB.format(recipe=recipe, base=base, use="p=$(sc --use $R)", unuse="sc --unuse $R")
    # A job that itself holds a use of the same repository keeps it: the release is the inner shell's.
    script = f"""
        p0=$(sc --use {recipe}) || exit 6
        bash -c '{inner}' || exit $?
        [ -f "$p0/data.txt" ] || {{ echo "the job's own use was released" >&2; exit 7; }}
        sc --unuse {recipe}
    """
    assert_job_done(run_job(script, ["bash"]), base)


def test_a_use_in_a_background_subshell_outlives_the_job_shell(setup, tmp_path):
    """``( ... ) &``: the subshell may outlive the job's shell; its use lasts as long as it."""
    base, recipe = setup
    go, done = tmp_path / "go", tmp_path / "done"
    script = f"""
        (
            p=$(sc --use {recipe} 2>/dev/null)
            while [ ! -e {go} ]; do sleep 0.05; done
            sc gc -d {base} >/dev/null
            if [ -f "$p/data.txt" ]; then echo ok > {done}; else echo deleted > {done}; fi
            sc --unuse {recipe}
        ) >/dev/null 2>&1 &
        while [ ! -e {user_dir(base)}/repo ]; do sleep 0.05; done
    """
    assert run_job(script, ["bash"]).returncode == 0  # the job's shell has ended
    go.touch()
    for _ in range(1200):
        if done.exists() and done.read_text():
            break
        subprocess.run(["sleep", "0.05"], check=True)
    assert done.read_text().strip() == "ok"


def test_a_use_of_a_job_that_ended_is_reclaimed(setup):
    base, recipe = setup
    assert run_job(f"p=$(sc --use {recipe} 2>/dev/null) && [ -d \"$p\" ]", ["bash"]).returncode == 0
    assert (user_dir(base) / "repo").exists()
    assert sc("gc", "-d", str(base)).returncode == 0
    assert not (user_dir(base) / "repo").exists()


# A process whose first thread ends while another of its threads runs on (the thread that started
# it waits at the end).  /proc says its state is Z, as of a zombie.
FIRST_THREAD_ENDS = """
import ctypes, threading, time
threading.Thread(target=time.sleep, args=(600,)).start()
print("ready", flush=True)
ctypes.CDLL(None).pthread_exit(None)
"""


def test_a_use_of_a_job_that_ended_and_waits_to_be_reaped_is_reclaimed(setup):
    # A job that ended, its parent not yet having collected its exit status (a zombie: a parent
    # that never does keeps it for as long as it lives), was taken for alive, its use never
    # reclaimed; and --pid named it as a live owner.  A process whose first thread ended alone,
    # which /proc shows as a zombie too, is alive.
    base, recipe = setup
    options = recipe.split()
    ended = subprocess.Popen(["sleep", "600"])
    half = subprocess.Popen([sys.executable, "-c", FIRST_THREAD_ENDS], stdout=subprocess.PIPE, text=True)
    try:
        assert half.stdout is not None and half.stdout.readline() == "ready\n"
        for owner, name in ((ended, "ended"), (half, "half")):
            use = sc("--use", *options[:2], "-n", name, *options[4:], "--pid", str(owner.pid))
            assert use.returncode == 0, use.stderr
        ended.kill()
        for owner in (ended, half):
            deadline = time.monotonic() + 30
            while Path(f"/proc/{owner.pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z":
                assert time.monotonic() < deadline, "the process did not end"
                time.sleep(0.05)
        assert sc("gc", *options[:2]).returncode == 0
        assert not (user_dir(base) / "ended").exists(), "the use of a job that ended was kept"
        assert (user_dir(base) / "half").exists(), "the use of a process with a live thread was reclaimed"
        refused = sc("--use", *options, "--pid", str(ended.pid))
        assert (refused.returncode, refused.stderr) == (2, f"sc: error: --pid {ended.pid}: no such process (see 'sc --help')\n")
    finally:
        for owner in (ended, half):
            owner.kill()
            owner.wait(10)
        if half.stdout is not None:
            half.stdout.close()
    assert sc("gc", *options[:2]).returncode == 0
    assert not (user_dir(base) / "half").exists()


def needs_root_and_unshare() -> None:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1) to make PID namespaces")


@pytest.mark.parametrize("idiom", ["plain substitution", "substitution with redirect", "timeout"])
def test_a_job_shell_that_is_pid_1_of_a_container_owns_its_uses(setup, idiom):
    needs_root_and_unshare()
    base, recipe = setup
    use, unuse = IDIOMS[idiom]
    script = JOB.format(recipe=recipe, base=base, use=use, unuse=unuse)
    result = run_job(script, ["bash"], prefix=["unshare", "--pid", "--fork", "--mount-proc"])
    assert_job_done(result, base)


def test_sc_as_pid_1_of_a_namespace_is_refused_clearly(setup):
    needs_root_and_unshare()
    _, recipe = setup
    result = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", f"{BIN}/sc", "--use", *recipe.split()],
        capture_output=True, text=True, timeout=60, env=sc_env(),
    )
    assert result.returncode != 0
    assert result.stderr.startswith("sc: ") and "--pid" in result.stderr
    assert len(result.stderr.splitlines()) == 1


# The zombies among the processes that /proc shows.
ZOMBIES = """
import glob
count = 0
for path in glob.glob("/proc/[0-9]*/stat"):
    try:
        with open(path) as f:
            count += f.read().rpartition(")")[2].split()[0] == "Z"
    except OSError:
        pass  # it ended meanwhile
print(count)
"""


def test_sc_run_as_pid_1_reaps_the_orphans_of_its_command(setup):
    # The entrypoint of a container is its init: what its command leaves running becomes its
    # child when its parent ends, and stays a zombie, holding its pid, until it is reaped.
    needs_root_and_unshare()
    _, recipe = setup
    orphaning = ["bash", "-c", '(sleep 0.1 &); sleep 1; exec "$0" -c "$1"', sys.executable, ZOMBIES]
    result = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", f"{BIN}/sc", "run", *recipe.split(), "--", *orphaning],
        capture_output=True, text=True, timeout=60, env=sc_env(),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "0\n", result.stdout


def test_sc_run_as_pid_1_ends_what_its_command_left_before_it_releases_its_use(setup):
    # A container's entrypoint whose command left a process running (`daemon &`): that process
    # held the repository's lock, which the command passed on, and the release could not delete
    # the repository; the kernel killed it as sc, PID 1, ended a moment later, and the
    # repository stayed, unused, until a gc.
    needs_root_and_unshare()
    base, recipe = setup
    leaving = ["sh", "-c", "sleep 60 & (setsid sleep 60 &); exit 3"]
    result = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child", f"{BIN}/sc", "run", *recipe.split(), "--",
         *leaving],
        capture_output=True, text=True, timeout=60, env=sc_env(),
    )
    assert (result.returncode, result.stderr) == (3, "")
    assert json.loads(sc("list", "--json", "-d", str(base)).stdout) == [], "the repository stayed"


def test_sc_run_as_pid_1_starts_its_command_with_the_signal_mask_it_was_given(setup):
    # As PID 1, sc blocks the signals it passes on from its first step until its handlers are in
    # place: the command gets the mask that sc was started with, not that one.
    needs_root_and_unshare()
    _, recipe = setup
    result = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", f"{BIN}/sc", "run", *recipe.split(), "--",
         "grep", "^SigBlk:", "/proc/self/status"],
        capture_output=True, text=True, timeout=60, env=sc_env(),
    )
    assert result.returncode == 0, result.stderr
    given = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("SigBlk:"))
    assert result.stdout == f"{given}\n"


@pytest.mark.parametrize("where", ["pid_1", "in a job"])
def test_sc_run_ended_as_it_releases_its_use_releases_it_first(setup, tmp_path, where):
    # `sc run` as a container's entrypoint, stopped (`docker stop`) as it released its use once
    # its command had ended: the signal, handled to end it (the kernel drops one left to its
    # default action at PID 1), broke off the release, and the use was left for gc.  Elsewhere
    # the signal's default action did the same.
    if where == "pid_1":
        needs_root_and_unshare()
    base, recipe = setup
    ran = tmp_path / "ran"
    site = tmp_path / "site"
    site.mkdir()
    # (Paused as it removes its lease: the command has ended, and the release is under way.)
    (site / "sitecustomize.py").write_text(pause_at(f'event == "os.remove" and os.path.exists({str(ran)!r})'))
    paused, go = tmp_path / "paused", tmp_path / "go"
    container = ["unshare", "--pid", "--fork", "--mount-proc"] if where == "pid_1" else ["env", "--default-signal=TERM"]
    proc = subprocess.Popen(
        [*container, f"{BIN}/sc", "run", *recipe.split(), "--", "touch", str(ran)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env=sc_env(PYTHONPATH=os.pathsep.join([str(site), SRC]), SC_TEST_PAUSED=str(paused), SC_TEST_GO=str(go)))
    try:
        wait_for(paused.exists, what="the release")
        # (env execs sc; unshare forks it)
        sc_pid = int(Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()[0]) if where == "pid_1" else proc.pid
        os.kill(sc_pid, signal.SIGTERM)
        go.touch()
        _, err = proc.communicate(timeout=30)
    finally:
        stop_process(proc)
    # (PID 1 is not ended by a signal of its own: it exits as a shell reports such an end.)
    assert proc.returncode == (128 + signal.SIGTERM if where == "pid_1" else -signal.SIGTERM), err
    assert "Traceback" not in err, err
    assert json.loads(sc("list", "--json", "-d", str(base)).stdout) == [], "its use was left"


def test_a_relative_file_path_means_the_file_where_sc_runs(tmp_path):
    """``file:data.tgz`` from two directories: two recipes, each with its own directory's bytes."""
    base = tmp_path / "base"
    base.mkdir()
    paths = []
    for name in ("first", "second"):
        where = tmp_path / name
        where.mkdir()
        make_tarball(where / "data.tgz", {"data.txt": f"{name}\n".encode()})
        with_default_name = run_job(f"cd {where} && sc --use -d {base} file:data.tgz tar", ["bash"])
        assert with_default_name.returncode == 0, with_default_name.stderr
        paths.append(Path(with_default_name.stdout.strip()))
        assert (paths[-1] / "data.txt").read_text() == f"{name}\n"
    assert paths[0] != paths[1]
    # One name for both: the second directory's recipe is another recipe, refused in one line.
    assert run_job(f"cd {tmp_path / 'first'} && sc --use -d {base} -n one file:data.tgz tar", ["bash"]).returncode == 0
    other = run_job(f"cd {tmp_path / 'second'} && sc --use -d {base} -n one file:./data.tgz tar", ["bash"])
    assert other.returncode != 0 and other.stderr.startswith("sc: ") and len(other.stderr.splitlines()) == 1
