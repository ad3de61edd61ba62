"""A lease is judged dead only by a process that can know: containers (PID namespaces) and hosts
(mount namespaces with their own boot id and machine id) sharing one base directory, and a
``/proc`` mounted with ``hidepid``.

Every party is a real process in a real namespace made by ``unshare`` (root is needed); every
judgement is the real ``sc gc``, which reclaims the leases it finds dead and deletes unused
repositories.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from scutil import (Sleeper, control, interpreter_for, make_tarball, mounted_tmpfs, on_host, sc_env, started_paused,
                    stop_process, tarball_bytes)
from sharedcache.engine.leases import (BOOTS, BOOTS_BYTES, BOOTS_PER_MACHINE, INITIAL_PID_NAMESPACE, Boots, boot_id,
                                       machine_id)

BIN = os.path.dirname(sys.executable)
SC = f"{BIN}/sc"

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None,
    reason="making PID and mount namespaces needs root and unshare(1)",
)


@pytest.fixture
def world() -> Iterator[tuple[Path, list[str]]]:
    """A base directory every party reaches, and the options and recipe of one repository."""
    with made_world(Path("/tmp")) as made:
        yield made


@pytest.fixture
def network(tmp_path: Path) -> Iterator[tuple[Path, list[str]]]:
    """The world of hosts: on a file system that hosts can share (nfs, ceph...), where every
    entry is flushed before its commit and so is an entry in every boot of every host.  A
    tmpfs stands in for it: to the engine it is no local disk either.  (A local disk cannot be
    shared by hosts: there an entry nobody keeps is committed for its boot only.)"""
    with mounted_tmpfs(tmp_path / "network", "64m") as mount, made_world(mount) as made:
        yield made


@contextmanager
def made_world(directory: Path) -> Iterator[tuple[Path, list[str]]]:
    shared = Path(tempfile.mkdtemp(prefix="sc-scope-", dir=directory))
    shared.chmod(0o1777)
    origin = shared / "data.tgz"
    make_tarball(origin, {"data.txt": b"shared data\n"})
    origin.chmod(0o644)
    base = shared / "base"
    base.mkdir()
    base.chmod(0o1777)
    try:
        yield base, ["-d", str(base), "-n", "repo", f"file:{origin}", "tar"]
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def exists(base: Path) -> bool:
    return (control(base) / "objects" / "repo").exists()


def run(argv: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env or sc_env())


def wait_for(path: Path, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def job(flags: Path, recipe: list[str]) -> str:
    """A job's shell: take a use, say so, wait for the word, check the data is there, release."""
    r = " ".join(recipe)
    return (f'p=$({SC} --use {r}) || exit 3; touch {flags}/ready; '
            f'while [ ! -e {flags}/go ]; do sleep 0.05; done; '
            f'[ -f "$p/data.txt" ] || exit 5; {SC} --unuse {r}')


CONTAINER = ["unshare", "--pid", "--fork", "--mount-proc"]


@contextmanager
def running(argv: list[str], flags: Path) -> Iterator[subprocess.Popen[str]]:
    """The job ``argv`` started and holding its use; stopped by its pid at the end if it runs."""
    proc = subprocess.Popen(argv, env=sc_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(flags / "ready", proc)
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def let_finish(proc: subprocess.Popen[str], flags: Path) -> None:
    """Tell the job to check its data and release its use; it must succeed."""
    (flags / "go").touch()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err


def test_a_container_s_use_is_not_judged_by_the_host_or_a_sibling_container(world, tmp_path):
    base, recipe = world
    with running([*CONTAINER, "bash", "-c", job(tmp_path, recipe)], tmp_path) as proc:
        # The job's pid means another process on the host (or none): neither judges it dead.
        assert run([SC, "gc", "-d", str(base)]).returncode == 0
        with Sleeper() as other:
            assert run([SC, "--use", "--pid", str(other.pid), *recipe]).returncode == 0
            assert run([SC, "--unuse", "--pid", str(other.pid), *recipe]).returncode == 0
        assert run([*CONTAINER, SC, "gc", "-d", str(base)]).returncode == 0
        assert exists(base), "a live container's data was deleted"
        let_finish(proc, tmp_path)
        assert not exists(base), "the container's release did not delete the repository"


def test_the_use_of_a_container_that_ended_is_reclaimed_by_root_on_the_host(world, tmp_path):
    base, recipe = world
    # --kill-child: the container's PID 1, and so every process in it, dies with unshare.
    with running([*CONTAINER, "--kill-child", "bash", "-c", job(tmp_path, recipe)], tmp_path) as proc:
        init = int(Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()[0])
        proc.kill()
        proc.wait(10)
    deadline = time.monotonic() + 30
    while Path(f"/proc/{init}").exists():  # the namespace ends when its PID 1 is reaped
        assert time.monotonic() < deadline, "the container's PID 1 outlived unshare"
        time.sleep(0.05)
    # Root in the host's namespace sees every namespace, and that one is gone.  (A sibling
    # container cannot see it: the first test shows it judges such a lease alive.)
    assert run([SC, "gc", "-d", str(base)]).returncode == 0
    assert not exists(base)


@pytest.fixture
def hosts(tmp_path: Path) -> dict[str, tuple[Path, Path, str]]:
    """Identities of hosts: (boot id file, machine id file, machine id); "a2" is "a" rebooted."""
    made = {}
    for name, boot, machine in (("a", "1" * 8, "a" * 32), ("b", "2" * 8, "b" * 32), ("a2", "3" * 8, "a" * 32)):
        boot_file, machine_file = tmp_path / f"{name}.boot", tmp_path / f"{name}.machine"
        boot_file.write_text(f"{boot}-0000-4000-8000-000000000000\n")
        machine_file.write_text(machine + "\n")
        made[name] = (boot_file, machine_file, machine)
    return made


def test_hosts_sharing_a_base_directory_never_reclaim_each_other_s_uses(network, hosts, tmp_path):
    base, recipe = network
    with running(on_host(hosts["a"], ["bash", "-c", job(tmp_path, recipe)]), tmp_path) as proc:
        assert run(on_host(hosts["b"], [SC, "gc", "-d", str(base)])).returncode == 0
        with Sleeper() as other:
            assert run(on_host(hosts["b"], [SC, "--use", "--pid", str(other.pid), *recipe])).returncode == 0
            assert run(on_host(hosts["b"], [SC, "--unuse", "--pid", str(other.pid), *recipe])).returncode == 0
        assert exists(base), "host B deleted data in use on host A"
        let_finish(proc, tmp_path)
        assert not exists(base)


def test_a_host_s_uses_end_with_its_boot_or_when_another_host_forgets_it(network, hosts):
    base, recipe = network
    with Sleeper() as owner:
        use = [SC, "--use", "--pid", str(owner.pid), *recipe]
        assert run(on_host(hosts["a"], use)).returncode == 0
        # The same machine after a reboot knows the use is over.
        assert run(on_host(hosts["a2"], [SC, "gc", "-d", str(base)])).returncode == 0
        assert not exists(base)

        assert run(on_host(hosts["a"], use)).returncode == 0
        assert run(on_host(hosts["b"], [SC, "gc", "-d", str(base)])).returncode == 0
        assert exists(base)
        forget = [SC, "gc", "-d", str(base), "--forget-host", hosts["a"][2]]
        assert run(on_host(hosts["b"], forget)).returncode == 0
        assert not exists(base)


def test_every_host_a_gc_forgets_is_forgotten_whether_given_with_commas_or_repeated(network, hosts):
    # `--forget-host A --forget-host B` forgot B alone, the last occurrence winning silently.
    base, recipe = network
    forgotten = hosts["a"][2], hosts["b"][2]
    with Sleeper() as owner:
        for given in (["--forget-host", forgotten[0], "--forget-host", forgotten[1]],
                      ["--forget-host", ",".join(forgotten)]):
            for host in ("a", "b"):
                assert run(on_host(hosts[host], [SC, "--use", "--pid", str(owner.pid), *recipe])).returncode == 0
            assert run([SC, "gc", "-d", str(base)]).returncode == 0
            assert exists(base)
            forget = run([SC, "gc", "-d", str(base), *given])
            assert forget.returncode == 0, forget.stderr
            assert not exists(base), f"{given}: a host's use was left"


def test_the_uses_of_a_host_s_containers_with_machine_ids_of_their_own_end_with_its_boot(network, hosts, tmp_path):
    # A container often has a machine id of its own (an image's, or none: its host name). After a
    # reboot its lease named another boot and another machine id, as another host's does: the
    # host kept it for ever, and the repository could never be evicted.  This host is host A (its
    # record is written by its own processes, which see its files), host B another one.
    base, recipe = network
    this_boot = tmp_path / "this.boot"
    this_boot.write_text(Path("/proc/sys/kernel/random/boot_id").read_text())
    rebooted = (hosts["a2"][0], None, "")  # this machine, after a reboot
    image = tmp_path / "image.machine"  # the machine id of an image that containers of both hosts run
    image.write_text("c" * 32 + "\n")
    containers = []
    try:
        for host, boot in (("a", this_boot), ("b", hosts["b"][0])):
            flags = tmp_path / f"container-{host}"
            flags.mkdir()
            take = f"{SC} --use {' '.join(recipe)} >/dev/null && touch {flags}/ready && exec sleep 600"
            inside = on_host((boot, image, "c" * 32), ["sh", "-c", take])
            containers.append(subprocess.Popen([*CONTAINER, "--kill-child", *inside], env=sc_env(),
                                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
            wait_for(flags / "ready", containers[-1])
        with Sleeper() as job:  # a use of host A's own, alive throughout
            assert run([SC, "--use", "--pid", str(job.pid), *recipe[:2], "-n", "mine", *recipe[4:]]).returncode == 0
            # Each host looks at the repositories while its container holds one (a listing, a gc,
            # a use); so does a container of the image on host A that shares A's PID namespace
            # (docker --pid=host), whose record would pair A's boot with the image's machine id:
            # a container of that image on host B would then judge A's own live use dead.
            for looking in ([SC, "list", "-d", str(base)], on_host(hosts["b"], [SC, "list", "-d", str(base)]),
                            on_host((this_boot, image, ""), [SC, "list", "-d", str(base)])):
                looked = run(looking)
                assert looked.returncode == 0, looked.stderr
            judged = run(on_host((hosts["b"][0], image, ""), [SC, "gc", "-d", str(base)]))
            assert judged.returncode == 0, judged.stderr
            assert (control(base) / "objects" / "mine").exists(), "host B's container judged host A's live use dead"
        inits = [container_init(proc) for proc in containers]
    finally:
        for proc in containers:
            proc.kill()
            proc.wait(10)
    for init in inits:
        wait_until_gone(init)
    # The machines go down with their containers: host A reboots: its container's use is over,
    # host B's container's is not (its boot is paired with no machine id of A's).
    assert run(on_host(rebooted, [SC, "gc", "-d", str(base)])).returncode == 0
    listed = run(on_host(rebooted, [SC, "list", "-d", str(base)]))
    assert listed.stdout.count(f"1@{'c' * 32}") == 1, listed.stdout
    assert exists(base), "a host took another host's container's use for one of its own before a reboot"


def on_uninitialized_host(boot: Path, uninitialized: Path, hostname: str, argv: list[str]) -> list[str]:
    """``argv`` run on a host of boot id ``boot`` whose first boot has not yet given it a machine
    id: systemd's ``uninitialized`` in its machine id files, and ``hostname`` as its host name."""
    script = ('mount --bind "$1" /proc/sys/kernel/random/boot_id && mount --bind "$2" /etc/machine-id && '
              '{ [ ! -e /var/lib/dbus/machine-id ] || mount --bind "$2" /var/lib/dbus/machine-id; } && '
              'hostname "$3" && shift 3 && exec "$@"')
    return ["unshare", "--mount", "--uts", "sh", "-c", script, "sh", str(boot), str(uninitialized), hostname, *argv]


def test_hosts_whose_machine_id_is_not_yet_made_are_told_apart_by_their_names(network, hosts, tmp_path):
    # systemd writes "uninitialized" as the machine id until the first boot completes: every such
    # host took it for its id, and judged another such host's live use as its own earlier boot's.
    base, recipe = network
    uninitialized = tmp_path / "uninitialized"
    uninitialized.write_text("uninitialized\n")
    with Sleeper() as owner:
        take = [SC, "--use", "--pid", str(owner.pid), *recipe]
        assert run(on_uninitialized_host(hosts["a"][0], uninitialized, "first", take)).returncode == 0
        judged = run(on_uninitialized_host(hosts["b"][0], uninitialized, "second", [SC, "gc", "-d", str(base)]))
        assert judged.returncode == 0, judged.stderr
        assert exists(base), "a host deleted data in use on another host of the same uninitialized machine id"
        listed = run(on_uninitialized_host(hosts["b"][0], uninitialized, "second", [SC, "list", "-d", str(base)]))
        assert f"{owner.pid}@host-first" in listed.stdout, listed.stdout


# --- hidepid: another user's processes are invisible in /proc ----------------------------------

ALICE, BOB, GROUP = 47101, 47102, 47500


def hidden(mode: int, uid: int, argv: list[str]) -> list[str]:
    """``argv`` run as ``uid`` where /proc is mounted with ``hidepid=mode``."""
    script = f'mount -t proc -o hidepid={mode} proc /proc && exec "$@"'
    return ["unshare", "--mount", "sh", "-c", script, "sh",
            "setpriv", f"--reuid={uid}", f"--regid={GROUP}", "--clear-groups", *argv]


@pytest.fixture(scope="module")
def python() -> tuple[str, dict[str, str]]:
    return interpreter_for(ALICE, GROUP)


def test_a_job_in_a_time_namespace_and_the_host_agree_on_whether_it_lives(world):
    # /proc shows a process in a time namespace (unshare --time, LXC's lxc.time.offset.boot)
    # start times with its boot time offset added: the host took such a job's live use for
    # a reused pid's, and deleted its data.
    base, recipe = world
    if run(["unshare", "--time", "--boottime", "100000", "--fork", "true"]).returncode != 0:
        pytest.skip("no time namespaces here")
    offset = ["unshare", "--time", "--boottime", "100000", "--fork"]
    script = f'echo $$ && {SC} --use --pid $$ "$@" >/dev/null && echo used && exec sleep 600'
    job = subprocess.Popen([*offset, "sh", "-c", script, "sh", *recipe], stdout=subprocess.PIPE, text=True,
                           env=sc_env())
    try:
        assert job.stdout is not None
        pid = int(job.stdout.readline())
        assert job.stdout.readline() == "used\n"
        assert run([SC, "gc", *recipe[:2]]).returncode == 0
        assert exists(base), "the host judged the live use of a job in a time namespace dead"
        os.kill(pid, 9)
        job.wait(30)
        assert run([SC, "gc", *recipe[:2]]).returncode == 0
        assert not exists(base), "the use of the job, ended, was not reclaimed"
    finally:
        if job.poll() is None:
            job.kill()
            job.wait(30)
    # And the other way round: gc in a time namespace judges a job of the host's.
    with Sleeper() as host_job:
        assert run([SC, "--use", "--pid", str(host_job.pid), *recipe]).returncode == 0
        assert run([*offset, SC, "gc", *recipe[:2]]).returncode == 0
        assert exists(base), "gc in a time namespace judged a live job of the host's dead"


def test_without_a_proc_of_its_own_every_command_says_so_in_one_line_and_a_live_use_stays(world):
    # A bare chroot or a sandbox may have no /proc: the identity of jobs, and the safe opening of
    # files through /proc/self/fd, are not to be had, and nothing may be judged without them.
    base, recipe = world
    with Sleeper() as job:
        assert run([SC, "--use", "--pid", str(job.pid), *recipe]).returncode == 0
        before = sorted(p.relative_to(base) for p in base.rglob("*"))
        hide = 'mount -t tmpfs none /proc && exec "$@"'
        commands = (["--use", *recipe], ["--unuse", "--pid", str(job.pid), *recipe], ["--location", *recipe],
                    ["run", *recipe, "--", "true"], ["gc", *recipe[:2]], ["list", *recipe[:2]])
        for command in commands:
            done = run(["unshare", "--mount", "sh", "-c", hide, "sh", SC, *command])
            assert done.returncode == 1, (command, done.stderr)
            assert done.stderr == ("sc: error: /proc is not mounted here: sc needs it to tell a live job from "
                                   "an ended one (mount it: mount -t proc proc /proc)\n"), (command, done.stderr)
        assert sorted(p.relative_to(base) for p in base.rglob("*")) == before
        assert exists(base)
        # A PID namespace under the /proc of another (unshare --pid without --mount-proc): the pids
        # there are another namespace's, and a lease would name the start of whichever process of
        # the host had this one's pid.
        for command in commands:
            done = run(["unshare", "--pid", "--fork", SC, *command])
            assert done.returncode == 1, (command, done.stderr)
            assert re.fullmatch(r"sc: error: /proc is another PID namespace's \(it shows this process as pid \d+, "
                                r"which is 1 here\): sc needs this namespace's to tell a live job from an ended "
                                r"one \(unshare --mount-proc\)\n", done.stderr), (command, done.stderr)
        assert sorted(p.relative_to(base) for p in base.rglob("*")) == before


def test_under_hidepid_another_user_s_live_use_is_alive_and_a_dead_one_is_reclaimed(world, python):
    base, recipe = world
    interpreter, env = python
    sc_as = [interpreter, "-m", "sharedcache"]
    shared = base / f".shared-cache-g{GROUP}" / "objects" / "repo"  # the group's cache, by consent
    alice_job = subprocess.Popen(["sleep", "600"], user=ALICE, group=GROUP)
    try:
        took = subprocess.run([*sc_as, "--use", "--group", str(GROUP), "--pid", str(alice_job.pid), *recipe],
                              capture_output=True, text=True, timeout=60, env=env, user=ALICE, group=GROUP,
                              umask=0o077)
        assert took.returncode == 0, took.stderr
        for mode in (1, 2):
            judged = run(hidden(mode, BOB, [*sc_as, "gc", "--group", str(GROUP), "-d", str(base)]), env=env)
            assert judged.returncode == 0, judged.stderr
            listed = run(hidden(mode, BOB, [*sc_as, "list", "--group", str(GROUP), "-d", str(base)]), env=env)
            assert listed.returncode == 0 and str(alice_job.pid) in listed.stdout, listed.stderr
            assert shared.exists(), f"hidepid={mode}: another user's live use was judged dead"
        alice_job.kill()
        alice_job.wait(10)
        assert run(hidden(2, BOB, [*sc_as, "gc", "--group", str(GROUP), "-d", str(base)]), env=env).returncode == 0
        assert not shared.exists()
    finally:
        if alice_job.poll() is None:
            alice_job.kill()
            alice_job.wait(10)


def wait_until_gone(pid: int) -> None:
    deadline = time.monotonic() + 30
    while Path(f"/proc/{pid}").exists():
        assert time.monotonic() < deadline, f"process {pid} outlived its container"
        time.sleep(0.05)


def pid_namespace_of(pid: int) -> int:
    return os.stat(f"/proc/{pid}/ns/pid").st_ino


def container_init(proc: subprocess.Popen[str]) -> int:
    """The host's pid of PID 1 of the container that ``unshare`` (``proc``) started."""
    return int(Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()[0])


def test_the_host_releases_a_live_container_job_s_use_by_the_job_s_pid_on_the_host(world, tmp_path):
    # A host's epilogue names a container's job by the pid it has on the host, where the job's
    # lease names it as its container does (PID 1 of its namespace): the host said the process
    # held no use.  Both jobs are PID 1 of their containers: each release is of its own job's use.
    base, recipe = world
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()

    def holding(flags: Path) -> list[str]:
        return [*CONTAINER, "--kill-child", "sh", "-c",
                f"{SC} --use {' '.join(recipe)} >/dev/null && touch {flags}/ready && exec sleep 600"]

    with running(holding(first), first) as one, running(holding(second), second) as other:
        released = run([SC, "--unuse", "--pid", str(container_init(one)), *recipe])
        assert released.returncode == 0, released.stderr
        listed = run([SC, "list", "-d", str(base)])
        assert re.findall(r"1@pid:\[(\d+)\]", listed.stdout) == [str(pid_namespace_of(container_init(other)))], \
            listed.stdout
        released = run([SC, "--unuse", "--pid", str(container_init(other)), *recipe])
        assert released.returncode == 0, released.stderr
        assert not exists(base), "the last use's release did not delete the repository"


def test_the_use_of_a_container_that_ended_is_reclaimed_though_the_next_container_has_its_inode(world, tmp_path):
    # The kernel gives an ended namespace's inode to the next namespace made (a second later
    # here): a host that judged by the namespace kept the ended container's use for as long as
    # the next container lived.
    base, recipe = world
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    with running([*CONTAINER, "--kill-child", "bash", "-c", job(first, recipe)], first) as proc:
        init = container_init(proc)
        ended = pid_namespace_of(init)
        proc.kill()
        proc.wait(10)
    wait_until_gone(init)
    deadline = time.monotonic() + 30
    while True:
        # A container with no use at all: its namespace is all it brings.
        idle = subprocess.Popen([*CONTAINER, "--kill-child", "sh", "-c", f"touch {second}/ready; exec sleep 600"])
        try:
            wait_for(second / "ready", idle)  # type: ignore[arg-type]
            if pid_namespace_of(container_init(idle)) == ended:
                assert run([SC, "gc", "-d", str(base)]).returncode == 0
                assert not exists(base), "the use of a container that ended was kept by the next one's namespace"
                return
        finally:
            idle.kill()
            idle.wait(10)
            (second / "ready").unlink(missing_ok=True)
        if time.monotonic() > deadline:
            pytest.skip("the kernel gave no new namespace the inode of the one that ended")
        time.sleep(0.5)


LONG_LIVED_HOST_PROGRAM = """
import sys, time
from pathlib import Path
import sharedcache
directory, origin, flags = sys.argv[1:]
def use(name):
    with sharedcache.use(f"file:{origin}", "tar", name=name, directories=[directory]):
        pass
use("early")  # judges the first container's lease: the host's processes are listed now
(Path(flags) / "looked").touch()
deadline = time.monotonic() + 60
while not (Path(flags) / "taken").exists():
    assert time.monotonic() < deadline
    time.sleep(0.05)
use("repo")  # its release judges the second container's lease, taken since
"""


def test_a_container_that_took_its_use_after_a_host_program_first_looked_keeps_it(world, tmp_path):
    # A program on the host that lives long (or `sc gc` going through many repositories) lists
    # the host's processes at its first judgement of a container's lease: a container started
    # since was missing there, and its use was judged dead and its data deleted under its job.
    base, recipe = world
    origin = recipe[-2].removeprefix("file:")
    early, late = tmp_path / "early", tmp_path / "late"
    early.mkdir()
    late.mkdir()
    early_recipe = [*recipe[:2], "-n", "early", *recipe[4:]]
    with running([*CONTAINER, "--kill-child", "bash", "-c", job(early, early_recipe)], early):
        program = subprocess.Popen([sys.executable, "-c", LONG_LIVED_HOST_PROGRAM, str(base), origin, str(tmp_path)],
                                   env=sc_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            wait_for(tmp_path / "looked", program)
            with running([*CONTAINER, "--kill-child", "bash", "-c", job(late, recipe)], late) as later:
                (tmp_path / "taken").touch()
                _, err = program.communicate(timeout=60)
                assert program.returncode == 0, err
                assert exists(base), "the host's program deleted the data of a container's live use"
                let_finish(later, late)
        finally:
            if program.poll() is None:
                program.kill()
                program.wait(10)
    assert not exists(base)


def test_under_hidepid_a_container_s_live_use_of_another_user_is_alive(world, python):
    # Under hidepid, the host's /proc shows a user none of another user's processes: a listing of
    # the host's namespaces lacked the container of that user's job, which was judged ended.
    base, recipe = world
    interpreter, env = python
    sc_as = [interpreter, "-m", "sharedcache"]
    shared = base / f".shared-cache-g{GROUP}" / "objects" / "repo"
    flags = base.parent / "flags"  # (where the user can write: the test's own directory is root's)
    flags.mkdir(mode=0o777)
    flags.chmod(0o777)
    take = " ".join([*sc_as, "--use", "--group", str(GROUP), *recipe])
    # (The change of uid clears the death signal that --kill-child set, which --pdeathsig keeps:
    # else the container's sleep outlived the test.)
    alice = [*CONTAINER, "--kill-child", "setpriv", "--pdeathsig=keep", f"--reuid={ALICE}", f"--regid={GROUP}",
             "--clear-groups", "sh", "-c", f"umask 077; {take} >/dev/null && touch {flags}/ready && exec sleep 600"]
    proc = subprocess.Popen(alice, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(flags / "ready", proc)
        for mode in (1, 2):
            judged = run(hidden(mode, BOB, [*sc_as, "gc", "--group", str(GROUP), "-d", str(base)]), env=env)
            assert judged.returncode == 0, judged.stderr
            assert shared.exists(), f"hidepid={mode}: another user's container's live use was judged dead"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


THREADED_JOB = """
import subprocess, sys, threading, time
from pathlib import Path
sc, flags, *recipe = sys.argv[1:]
thread = threading.Thread(target=lambda: (Path(flags) / "go").exists() or time.sleep(60), daemon=True)
thread.start()
took = subprocess.run([sc, "--use", "--pid", str(thread.native_id), *recipe], capture_output=True, text=True)
assert took.returncode == 0, took.stderr
(Path(flags) / "ready").touch()
deadline = time.monotonic() + 60
while not (Path(flags) / "go").exists():
    assert time.monotonic() < deadline
    time.sleep(0.05)
done = subprocess.run([sc, "--unuse", "--pid", str(thread.native_id), *recipe], capture_output=True, text=True)
assert done.returncode == 0, done.stderr
"""


def test_a_use_given_to_a_thread_of_a_container_s_process_is_its_process_s(world, tmp_path):
    # `--pid` took a thread's id for a process's: the host, which looks for a container's owner
    # among its processes, found none of that id, and deleted the data under the live process.
    base, recipe = world
    argv = [*CONTAINER, "--kill-child", sys.executable, "-c", THREADED_JOB, SC, str(tmp_path), *recipe]
    with running(argv, tmp_path) as proc:
        assert run([SC, "gc", "-d", str(base)]).returncode == 0
        assert exists(base), "the host deleted the data of a live process's thread's use"
        let_finish(proc, tmp_path)
    assert not exists(base), "the release by the thread's id did not release the use"


def test_sc_entered_into_a_container_is_told_its_parent_is_outside(world):
    # As `docker exec` and `kubectl exec` start a command in a running container, whose PID 1 is
    # another process: sc was told it was the namespace's first process.
    base, recipe = world
    container = subprocess.Popen([*CONTAINER, "--kill-child", "sleep", "600"])
    try:
        deadline = time.monotonic() + 30
        while not Path(f"/proc/{container.pid}/task/{container.pid}/children").read_text().split():
            assert time.monotonic() < deadline, "the container never started"
            time.sleep(0.05)
        init = int(Path(f"/proc/{container.pid}/task/{container.pid}/children").read_text().split()[0])
        entered = run(["nsenter", "-t", str(init), "-p", "-m", SC, "--use", *recipe])
    finally:
        container.kill()
        container.wait(10)
    assert entered.returncode == 1
    assert entered.stderr == ("sc: error: sc's parent is outside its PID namespace (sc is the namespace's first "
                              "process, or was entered into it, as nsenter and docker exec do): there is no job to "
                              "own the use here; pass --pid to name its owner\n"), entered.stderr
    assert not exists(base)


def test_a_container_without_the_network_fails_its_own_download_not_the_host_s(world, origin, tmp_path):
    # A container without the network populated first; a job of the host, which reaches the
    # origin, waited for it and was given its failure ("Network is unreachable") as its own.
    base, _ = world
    payload = os.urandom(300_000)
    url = origin.add("/blob.bin", payload)
    recipe = ["-d", str(base), "-n", "blob", f"http:{url}", f"sha256:{hashlib.sha256(payload).hexdigest()}"]
    job_shell = ["sh", "-c", '"$@"; exit $?', "sh"]  # (the container's PID 1, the job that owns the use)
    isolated = subprocess.Popen(["unshare", "--net", *CONTAINER, *job_shell, SC, "--use", *recipe],
                                env=sc_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        status = control(base) / "populate" / "blob.json"
        wait_for(status, isolated)  # (its population under way: the host's use waits for it)
        host = run([SC, "--use", *recipe])
        _, err = isolated.communicate(timeout=60)
    finally:
        if isolated.poll() is None:
            isolated.kill()
            isolated.wait(10)
    assert isolated.returncode == 1 and "Network is unreachable" in err, err
    assert host.returncode == 0, host.stderr
    assert (Path(host.stdout.strip()) / "blob.bin").read_bytes() == payload


@contextmanager
def networks_with_origins(served: dict[str, Path], rate: float) -> Iterator[tuple[list[str], int]]:
    """A network namespace for each of ``served``'s directories, in which a tests/origin.py
    serves it on one and the same loopback address: the names of the namespaces, and the port.
    The first origin sends at ``rate`` bytes per second."""
    if shutil.which("ip") is None:
        pytest.skip("needs ip (iproute2), to make network namespaces")
    names, origins = [], []
    try:
        port = 0  # (the first origin's, free in every other namespace)
        for i, directory in enumerate(served.values()):
            name = f"sc{os.getpid()}-net{i}"
            made = run(["ip", "netns", "add", name])
            if made.returncode != 0:
                pytest.skip(f"cannot make a network namespace here: {made.stderr.strip()}")
            names.append(name)
            assert run(["ip", "-n", name, "link", "set", "lo", "up"]).returncode == 0
            command = [sys.executable, str(Path(__file__).with_name("origin.py")), "--dir", str(directory),
                       "--port", str(port), *(["--rate", str(rate)] if i == 0 else [])]
            origins.append(subprocess.Popen(["ip", "netns", "exec", name, *command], stdout=subprocess.PIPE,
                                            text=True))
            assert origins[-1].stdout is not None
            port = int(origins[-1].stdout.readline())  # printed once it listens
        yield names, port
    finally:
        for origin in origins:
            stop_process(origin)
            assert origin.stdout is not None
            origin.stdout.close()
        for name in names:
            run(["ip", "netns", "del", name])


def test_a_container_whose_network_serves_other_bytes_fails_its_own_checksum_not_another_s(world, tmp_path):
    # One network's origin for a URL (a captive portal, a proxy's page of refusal, another
    # mirror) served other bytes: the job there failed its checksum, and a job of another network
    # namespace, whose origin serves the right bytes, was given that failure as its own.
    base, _ = world
    served = {network: tmp_path / network for network in ("other bytes", "right bytes")}
    for directory in served.values():
        directory.mkdir()
        (directory / "blob.bin").write_bytes(os.urandom(300_000))
    right = (served["right bytes"] / "blob.bin").read_bytes()
    with networks_with_origins(served, rate=60_000) as ((other, mine), port), Sleeper() as owner:
        use = [SC, "--use", "-d", str(base), "--pid", str(owner.pid), "-n", "blob",
               f"http:http://127.0.0.1:{port}/blob.bin", f"sha256:{hashlib.sha256(right).hexdigest()}"]
        first = subprocess.Popen(["ip", "netns", "exec", other, *use], env=sc_env(), stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        try:
            wait_for(control(base) / "populate" / "blob.json", first)  # (under way: the next use waits)
            waiter = run(["ip", "netns", "exec", mine, *use])
            _, err = first.communicate(timeout=60)
        finally:
            stop_process(first)
    assert first.returncode == 1 and "sha256 mismatch" in err, err
    assert waiter.returncode == 0, waiter.stderr
    assert (Path(waiter.stdout.strip()) / "blob.bin").read_bytes() == right


#: How a container of the host's network with mounts of its own sees the host's file in "$1" (a
#: directory; "$2" is the test's): the shell that makes the container's view, and what its
#: population meets there.
CONTAINER_VIEWS = {
    "another file at the path": ('mount -t tmpfs none "$1" && cp "$2/other.tgz" "$1/data.tgz"', "sha256 mismatch"),
    "no file at the path": ('mount -t tmpfs none "$1"', "no such file"),
}


@pytest.mark.parametrize("view", list(CONTAINER_VIEWS))
def test_a_container_whose_mounts_show_other_data_fails_its_own_population_not_the_host_s(world, origin, tmp_path,
                                                                                           view):
    # A container of the host's network, with a mount namespace of its own, populated first: a
    # file: path named another file there, or none.  A job of the host waited for it and was
    # given that failure as its own, though its own file gives the right data.
    base, _ = world
    make_view, failure = CONTAINER_VIEWS[view]
    right = tarball_bytes({"data.txt": b"the host's data\n"})
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "data.tgz").write_bytes(right)
    (tmp_path / "other.tgz").write_bytes(tarball_bytes({"data.txt": b"the container's data\n"}))
    container = ["unshare", "--mount", "sh", "-c", f'{make_view} && shift 2 && exec "$@"', "sh",
                 str(tmp_path / "in"), str(tmp_path)]
    with Sleeper() as owner:
        use = ["--use", "-d", str(base), "--pid", str(owner.pid), "-n", "data", f"file:{tmp_path}/in/data.tgz",
               f"sha256:{hashlib.sha256(right).hexdigest()}", "tar"]
        # The container stops once its population is under way (its status record written), and
        # the host's use once it has asked and waits for that population to end.
        first, populating, populate = started_paused(
            tmp_path, "container", 'event == "os.mkdir" and str(args[0]).endswith(".work")', *use, prefix=container)
        waiter = None
        try:
            wait_for(populating, first)
            waiter, waiting, wait = started_paused(
                tmp_path, "host", 'event == "open" and str(args[0]).endswith("/data.json")', *use)
            wait_for(waiting, waiter)
            populate.touch()
            _, err = first.communicate(timeout=60)
            assert first.returncode == 1 and failure in err, err
            wait.touch()
            out, err = waiter.communicate(timeout=60)
        finally:
            stop_process(first)
            if waiter is not None:
                stop_process(waiter)
    assert waiter.returncode == 0, err
    assert (Path(out.strip()) / "data.txt").read_bytes() == b"the host's data\n"


def test_a_url_s_failure_in_a_container_with_mounts_of_its_own_is_the_host_s_waiters_failure_too(world, origin,
                                                                                                 tmp_path):
    # Every job of an Apptainer container or of a batch slot with a scratch /tmp has mounts of
    # its own: if that made each waiter of a failing origin try for itself, they would repeat
    # its retries one after another.  The origin is asked once.
    base, _ = world
    origin.add("/data.tgz", tarball_bytes({"data.txt": b"data\n"}))
    origin.fault("/data.tgz", status=404, times=100)
    use = ["--use", "-d", str(base), "-n", "data", f"http:{origin.url('/data.tgz')}", "tar"]
    first, populating, populate = started_paused(tmp_path, "container", 'event == "os.mkdir" and str(args[0]).endswith(".work")',
                                                 *use, prefix=["unshare", "--mount"])
    waiter = None
    try:
        wait_for(populating, first)
        waiter, waiting, wait = started_paused(
            tmp_path, "host", 'event == "open" and str(args[0]).endswith("/data.json")', *use)
        wait_for(waiting, waiter)
        populate.touch()
        _, first_err = first.communicate(timeout=60)
        wait.touch()
        _, err = waiter.communicate(timeout=60)
    finally:
        stop_process(first)
        if waiter is not None:
            stop_process(waiter)
    assert first.returncode == 1 and "404" in first_err, first_err
    assert waiter.returncode == 1 and "404" in err, err
    assert origin.stats("/data.tgz").gets == 1


COUNTED_LISTINGS = """
import os, sys
listings = []
sys.addaudithook(lambda event, args: listings.append(1) if event == "os.listdir" and args[0] == "/proc" else None)
from sharedcache.engine.leases import foreign_process_alive, pid_namespace, start_time
mine = start_time(os.getpid())
# Ended containers' processes, started before this one: each judged dead from the first listing.
dead = [foreign_process_alive(pid_namespace() + 1 + n, 2 + n, mine - 1 - n) for n in range(50)]
print(len(listings), dead.count(False))
"""


def test_the_owners_of_ended_containers_are_judged_from_one_listing_of_the_host_s_processes():
    # Each owner not found listed the host's processes again: 300 leases of ended containers cost
    # a release or a warm use seconds on a host of 2,000 processes.  One that started before the
    # newest process listed would have been in the listing.
    counted = run([sys.executable, "-c", COUNTED_LISTINGS])
    assert counted.returncode == 0, counted.stderr
    assert counted.stdout.split() == ["1", "50"], counted.stdout


# --- the record of a cache's boots (leases.Boots) ------------------------------------------------

NOTE_THIS_BOOT = ("import os, sys\n"
                  "from sharedcache.engine.leases import Boots\n"
                  "Boots(lambda: os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY), 0o644).note_this_boot()\n")


def noted_by_the_host(cache: Path) -> None:
    """Have a process of the host note this boot in the record of ``cache``, as one that has met a
    lease of this boot of another machine id does.  Only the host's processes record: those of the
    host's PID namespace and of its first process's mount namespace, which a sandbox may keep
    from being read; the process is given a mount namespace of its own where it is."""
    if pid_namespace_of(os.getpid()) != INITIAL_PID_NAMESPACE:
        pytest.skip("not in the host's PID namespace")
    script = 'mount --bind /proc/$$/ns /proc/1/ns && exec "$@"'
    noted = subprocess.run(["unshare", "--mount", "sh", "-c", script, "sh", sys.executable, "-c", NOTE_THIS_BOOT,
                            str(cache)], capture_output=True, text=True, timeout=60, env=sc_env())
    assert noted.returncode == 0, noted.stderr


def boot_number(number: int) -> str:
    return f"{number:08x}-abcd-4000-8000-000000000000"


def test_a_host_s_record_of_boots_keeps_the_last_eight_of_each_machine(tmp_path):
    other = "e" * 32
    lines = [f"{machine_id()} {boot_number(n)}\n" for n in range(10)] + [f"{other} {boot_number(n)}\n" for n in range(10)]
    (tmp_path / BOOTS).write_text("".join(lines))
    noted_by_the_host(tmp_path)
    kept = (tmp_path / BOOTS).read_text().splitlines()
    assert BOOTS_PER_MACHINE == 8
    # This machine's latest seven and this boot; another machine's lines are its own to keep.
    assert [line for line in kept if line.startswith(machine_id())] == [
        *(f"{machine_id()} {boot_number(n)}" for n in range(3, 10)), f"{machine_id()} {boot_id()}"]
    assert [line for line in kept if line.startswith(other)] == [line.rstrip("\n") for line in lines[10:]]
    boots = Boots(lambda: os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY), 0o644)
    assert [boots.earlier(boot_number(n)) for n in range(10)] == [False] * 3 + [True] * 7


def test_a_host_s_record_of_boots_counts_only_well_formed_lines(tmp_path):
    # A member of a group cache may write anything there: only a line of a machine id and a boot
    # id, alone, makes that boot one of the machine's; nothing else in the file fails a judgement.
    me = machine_id()
    malformed = {
        1: f"{me} {boot_number(1)} extra",  # three words
        2: f"{me}  {boot_number(2)}",  # two spaces
        3: f"{me} {boot_number(3).upper()}",  # not a boot id's characters
        4: f"{me} {boot_number(4)}\r",
        5: f"{me} {boot_number(5)}{'0' * 30}",  # longer than any boot id
        6: f"{me}\t{boot_number(6)}",
    }
    text = "\n".join([*malformed.values(), "\xff\x00 garbage", f"{me} {boot_number(7)}", ""])
    (tmp_path / BOOTS).write_bytes(text.encode("utf-8", "surrogateescape"))
    boots = Boots(lambda: os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY), 0o644)
    assert [boots.earlier(boot_number(n)) for n in range(1, 8)] == [False] * 6 + [True]
    # Nor is a line past the most that is read.
    (tmp_path / BOOTS).write_text(" " * BOOTS_BYTES + f"\n{me} {boot_number(8)}\n")
    boots = Boots(lambda: os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY), 0o644)
    assert not boots.earlier(boot_number(8))


def test_a_host_s_record_of_boots_is_never_read_or_written_through_a_link(tmp_path):
    # A member could point the record at a file of hers, to pair any boot with this machine, or
    # at a file of the user's, for the host to write.
    target = tmp_path / "elsewhere"
    target.write_text(f"{machine_id()} {boot_number(1)}\n")
    (tmp_path / BOOTS).symlink_to(target)
    boots = Boots(lambda: os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY), 0o644)
    assert not boots.earlier(boot_number(1))
    noted_by_the_host(tmp_path)
    assert target.read_text() == f"{machine_id()} {boot_number(1)}\n"
    assert not (tmp_path / BOOTS).is_symlink()
    assert (tmp_path / BOOTS).read_text() == f"{machine_id()} {boot_id()}\n"
