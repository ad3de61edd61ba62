"""Leases: who holds a use (the identity of a process, whether it is alive, and the job a
command belongs to), and the lease files that record it in an entry's directory.

A use that outlives the command that took it (``sc --use`` exits at once; the job that asked
goes on) is recorded as a *lease* naming its owner process.  A pid alone is not an identity: pids
are reused, after a reboot they mean nothing, and in another PID namespace (a container) or on
another host they name another process.  An owner is therefore

    (boot id, pid, start time, PID namespace, machine id)

where the boot id is ``/proc/sys/kernel/random/boot_id``, the start time is field 22 of
``/proc/PID/stat`` (clock ticks since boot, as the host counts them: ``/proc`` shows a process
in a time namespace its namespace's boot time offset added, which :func:`_started` takes off, so
that a job in one and a host judging it agree), the PID namespace is the inode of
``/proc/self/ns/pid`` of the process that wrote the lease (the pid is as seen there), and the
machine id is ``/etc/machine-id`` (or ``/var/lib/dbus/machine-id``, else the host name; systemd's
``uninitialized``, which names no host, counts as none).  A process reads them once; a child of
fork reads them again, all but the boot id (see :func:`_forget_in_child`).

A lease is judged dead only by a process that can know, and unknown means alive:

- same boot id and same PID namespace: dead exactly when this boot's process with that pid did
  not start at that time (a start time of 0 is unknown, as in the population record of a release
  before records named their owners: there is no such process), or has ended and waits for its
  parent to collect its exit status (a zombie: state ``Z``, with no thread left).  Where
  ``/proc`` hides other users' processes (``hidepid``), ``kill(pid, 0)`` answers: ESRCH is dead,
  EPERM is alive (a reused pid then cannot be told from the owner: such a lease may outlive its
  owner, never the reverse);
- same boot id, another PID namespace (a container sharing the base directory): alive, unless
  the process judging is in the host's PID namespace, where ``/proc`` shows every process unless
  ``hidepid`` hides some, and finds no process that is the owner: started at that time, with
  that pid in that namespace (:func:`foreign_process_alive`); otherwise a process of that
  namespace judges it;
- same boot id, whatever the machine id: the boot id is the kernel's, shared by every container
  of the host, so the owner is a process of this kernel, judged as above (a container often has
  a machine id of its own, or none and so its host name);
- another boot id and the same machine id: this machine before a reboot: dead;
- another boot id and another machine id: dead if the cache recorded that boot as one of this
  machine id's (below): a container of this machine before a reboot; else alive (another host
  sharing the base directory), unless that host was forgotten by policy (:func:`forget_hosts`,
  ``sc gc --forget-host``).

After a reboot the leases of this machine's containers name its previous boot and their own
machine ids, which nothing on the machine links to it any more.  So each cache keeps a record,
``<cache>/boots`` (:class:`Boots`): lines ``<machine id> <boot id>``, the last
:data:`BOOTS_PER_MACHINE` boots of each machine id.  A process of the host's PID namespace and
of its first process's mount namespace (the host, whose machine id is the host's own; a container
that shares the host's PID namespace has files of its own), that judges a lease of its own boot
and another machine id, adds its boot there, once; a lease of another boot and another machine
id is this machine's, and dead, if the record pairs that boot with the judge's machine id.  Boot ids are
random and never reused, so a boot paired with this machine id was a boot of this machine (as
trustworthy as the rule for its own leases: machine ids are unique per host); another host's
boot is never paired with it, and its leases stay alive.  Only a boot in which the host itself
judged its containers' leases (any ``sc gc``, ``sc list``, eviction, or use of the same
repository) is known: one in which only containers used the cache is not, and its leases stay
alive, as before, until ``--forget-host``.  A process of a container does not record: its
machine id may be one that containers of other hosts have too (a host name given to every one
of them, an id baked into an image), and its record would pair those hosts' boots with it.
Each machine id is written only by processes of that machine, which add the same line, so two
of them writing at once lose nothing; two hosts writing at once may lose one host's line, which
its next judgement in the boot adds again (until then, its leases are alive: unknown is alive).
The file is read as untrusted data (a member of a group cache may write it): opened without
following a link or waiting on a FIFO, at most :data:`BOOTS_BYTES`, and only well-formed lines
count; a line a member planted can make leases of a boot of another machine dead, as the member
could remove them anyway.

Leases written before namespaces and hosts were recorded (``boot:pid:start``) are judged as
they were then: by pid and start time in this boot, dead after a reboot.

A lease may also name the process that ran ``sc`` when that was a short-lived copy of the job's
shell (see :func:`job_of`): the lease is alive while either lives, so a use taken in a
background subshell lasts as long as that subshell even if the job's shell ends first.

A lease is an empty file ``<entry>/leases/<owner key>.<random id>``: creating it takes a use,
removing it releases that use, and its name says whose it is, so that reading an entry's leases
is one directory listing.  The callers hold the entry's lock while they add or remove leases
(see the protocol).

``leases/`` is opened without following a link, and every lease is made, listed and removed
through that descriptor: in a group cache the entry may be another member's, who may put a link
to a directory of yours in its place, where every file not named as a live owner's lease would
be removed as a dead one.  Whatever a member plants among the leases (a directory, a name no
process can have) is nobody's lease, and fails nothing.

A lease taken for :func:`sharedcache.use` must reach the ``finally`` that releases it, and its
release must run to its end, whenever Ctrl-C comes: :data:`INTERRUPTS` defers the interrupt of
the main thread from the lease's creation (:func:`add_lease`) until ``use()`` holds it, and
while ``use()`` releases it, then raises it (see :class:`InterruptGuard`); a use that another
thread leaves is released there, deferring nothing of the main thread's.  ``sc --unuse`` defers
it from the lease's removal (:func:`remove_lease`) on: its release is then the outcome.  ``sc
--use`` and ``sc run`` defer it as ``use()`` does, until the path is written or the command's
wait holds the use, and hold back SIGTERM and SIGHUP with it (see
:meth:`InterruptGuard.hold_endings`), save while a population that has not committed yet waits
for a busy index (:meth:`InterruptGuard.let_endings_act`).
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # (signal's C module, loaded with the interpreter: signal imports enum)
import _thread
import os

from ..errors import CacheError, raise_if_over_limit
from ..lean import Scope
from .fsutil import create_empty, open_directory, read_control, unique_name, write_atomic

TYPE_CHECKING = False  # see sharedcache.lean
if TYPE_CHECKING:
    from collections.abc import Callable
    from types import CodeType, FrameType
    from typing import Any, TypeVar

    Function = TypeVar("Function", bound=Callable[..., Any])

#: The inode of the initial PID namespace (the host's), fixed by the kernel.
INITIAL_PID_NAMESPACE = 0xEFFFFFFC

#: Commands that fork the command they run and wait for it: a use taken under them belongs to
#: whoever ran them.  (Commands that exec the next one, like env or nice, never appear.)
FORKING_WRAPPERS = frozenset(
    {"timeout", "time", "flock", "sudo", "su", "runuser", "setsid", "strace", "ltrace", "xargs"}
)

_boot_id: str | None = None
_machine_id: str | None = None
_pid_namespace: int | None = None
_forgotten: frozenset[str] = frozenset()
_own_start: tuple[int, int] | None = None  # (pid, start time) of this process
_boot_offset: int | None = None  # clock ticks (see _started)


def _forget_in_child() -> None:
    """Forget, in a child of fork, what this process read of itself and of the namespaces it is
    in: a launcher forks the job it puts into new ones (``unshare --fork``, a container runtime),
    whose PID namespace its pids are of, whose time namespace has its own boot time offset, whose
    root may hold another machine id, and whose ``/proc`` shows other processes.  Kept, a job
    forked as PID 1 of a new PID namespace would name the parent's namespace in its leases, and
    judge the host's leases by its own ``/proc``, where their owners are not: it would reclaim
    them, and its last release delete the data under the host's jobs.  Its start time too: a job
    forked so by a parent that is PID 1 of its own namespace (a container's entrypoint) has the
    parent's pid, and would name the parent's start time, its use then reclaimed by the host's
    gc.  (The boot id is the kernel's, the same in every namespace.)"""
    global _machine_id, _pid_namespace, _boot_offset, _host_processes, _own_start  # noqa: PLW0603 - see above
    _machine_id = _pid_namespace = _boot_offset = _host_processes = _own_start = None


os.register_at_fork(after_in_child=_forget_in_child)


def require_proc() -> None:
    """Refuse to go on where ``/proc`` is not mounted (a bare chroot, a sandbox without it), or
    is another PID namespace's (``unshare --pid`` without ``--mount-proc``): the facts of this
    module come from it, and the engine opens files safely through ``/proc/self/fd``.  One clear
    error, rather than a failure of whichever step met it first, or, under another namespace's
    ``/proc``, the start time of the host's process of the same pid taken for this one's: a
    lease that died with that process, under a live job."""
    try:
        shown = int(os.readlink("/proc/self"))  # this process's pid in the PID namespace of /proc
    except (OSError, ValueError):
        raise CacheError("/proc is not mounted here: sc needs it to tell a live job from an ended one "
                         "(mount it: mount -t proc proc /proc)") from None
    if shown != os.getpid():
        raise CacheError(f"/proc is another PID namespace's (it shows this process as pid {shown}, which is "
                         f"{os.getpid()} here): sc needs this namespace's to tell a live job from an ended one "
                         "(unshare --mount-proc)")


def boot_id() -> str:
    global _boot_id  # noqa: PLW0603 - read once per process, then remembered
    if _boot_id is None:
        found = _read("/proc/sys/kernel/random/boot_id")
        if found is None:
            require_proc()
            raise CacheError("cannot read /proc/sys/kernel/random/boot_id, which tells this boot from others")
        _boot_id = found.strip().decode()
    return _boot_id


def machine_id() -> str:
    """This host's machine id, or its host name where it has none (a lean container, or a
    system whose first boot has not yet given it one: systemd writes ``uninitialized`` there
    until it has, the same on every such host)."""
    global _machine_id  # noqa: PLW0603 - read once per process, then remembered
    if _machine_id is None:
        for path in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
            found = (_read(path) or b"").strip().decode(errors="replace")
            if found.isalnum() and found != "uninitialized":
                _machine_id = found
                break
        else:
            name = os.uname().nodename
            _machine_id = "host-" + "".join(c if c.isalnum() or c == "-" else "_" for c in name)
    return _machine_id


def pid_namespace() -> int:
    """The inode of this process's PID namespace, in which pids are read and written."""
    global _pid_namespace  # noqa: PLW0603 - read once per process, then remembered
    if _pid_namespace is None:
        _pid_namespace = os.stat("/proc/self/ns/pid").st_ino
    return _pid_namespace


def forget_hosts(hosts: frozenset[str]) -> None:
    """Judge the leases of ``hosts`` (machine ids) written in another boot dead, in this process:
    the explicit policy for hosts that are gone (``sc gc --forget-host``)."""
    global _forgotten  # noqa: PLW0603 - a policy of this process, set once at the edge
    _forgotten = hosts


def _stat(pid: int) -> list[bytes] | None:
    """Fields 3 on of ``/proc/PID/stat``; None if there is no such process or it is hidden."""
    stat = _read(f"/proc/{pid}/stat")
    if stat is None:  # gone, or hidden by hidepid (another user's process)
        return None
    # The command name (field 2) is in parentheses and may itself contain spaces and parentheses.
    return stat[stat.rindex(b")") + 2 :].split()


def _started(fields: list[bytes]) -> int:
    """The start time in ``fields`` (of :func:`_stat`), in clock ticks since the host's boot.

    ``/proc`` shows start times plus the boot time offset of the reader's time namespace
    (``unshare --time --boottime``, LXC's ``lxc.time.offset.boot``): a job in such a namespace
    would write one start time and the host read another, and judge its live use dead.  An
    offset that is not a whole number of ticks (one CRIU may give a restored process) leaves the
    two a tick apart half of the time: only its whole ticks are taken off."""
    global _boot_offset  # noqa: PLW0603 - read once per process, then remembered
    if _boot_offset is None:
        _boot_offset = 0
        for line in (_read("/proc/self/timens_offsets") or b"").splitlines():
            words = line.split()
            if len(words) == 3 and words[0] == b"boottime":  # "boottime <seconds> <nanoseconds>"
                ticks = os.sysconf("SC_CLK_TCK")
                _boot_offset = int(words[1]) * ticks + int(words[2]) * ticks // 1_000_000_000
    return int(fields[19]) - _boot_offset  # field 22 of the whole line


def start_time(pid: int) -> int | None:
    """Start time of process ``pid`` in clock ticks since boot, or None if it cannot be seen."""
    fields = _stat(pid)
    return None if fields is None else _started(fields)


def process_alive(pid: int, started: int) -> bool:
    """Whether the process ``pid`` of this namespace that started at ``started`` is alive; a
    ``started`` of 0 is unknown (a population record of a release before the records named their
    owners' keys): then any process ``pid`` alive is taken for it."""
    if pid <= 0:
        return False
    fields = _stat(pid)
    if fields is not None:
        return started in (0, _started(fields)) and not _ended(pid, fields[0])
    try:
        os.kill(pid, 0)  # /proc hides it or it is gone: the kernel tells which
    except (ProcessLookupError, OverflowError):  # (past pid_t: a name no process can have)
        return False
    except PermissionError:
        return True  # another user's process, hidden by hidepid: alive as far as anyone can tell
    return True


def _ended(pid: int, state: bytes) -> bool:
    """Whether the process ``pid``, in ``state`` (field 3 of its stat), has ended: a zombie (``Z``)
    has, its exit status not yet collected by its parent (one that never does keeps it for as
    long as it lives), unless only its first thread ended and others of it still run (its stat
    then says ``Z`` as well: the count of its threads tells)."""
    if state not in (b"Z", b"X"):
        return False
    status = _read(f"/proc/{pid}/status") or b""
    threads = _status_field(status, b"Threads:") or [b"1"]
    return int(threads[0]) <= 1


def _status_field(status: bytes, name: bytes) -> list[bytes]:
    """The words of the field ``name`` (``b"NSpid:"``) of ``/proc/PID/status`` text ``status``;
    empty if it has none."""
    return next((line.split()[1:] for line in status.splitlines() if line.startswith(name)), [])


#: The host's processes by start time, as the last look at all of ``/proc`` found them, and the
#: newest of those start times (see :func:`foreign_process_alive`); None before the first look.
_host_processes: tuple[dict[int, list[int]], int] | None = None


def foreign_process_alive(pid_ns: int, pid: int, started: int) -> bool | None:
    """Whether the process ``pid`` of another PID namespace ``pid_ns`` (pid as seen there) that
    started at ``started`` is alive, as a process that sees every process of the host judges it
    (any process in the host's namespace where ``/proc`` hides none); None if this process cannot
    see them all.

    The process is looked for, not its namespace: a namespace's inode is reused once it has
    ended (the next container often gets it a second later), so a namespace found alive may be
    another container than the owner's.  A process of the host is the owner if it started at
    ``started``, has not ended, and has ``pid`` in ``pid_ns``: its own namespace is ``pid_ns``
    and ``pid`` its pid there, or it lives in a namespace nested in another and has ``pid`` at
    some level between (nesting is not traced: unknown is alive).

    The host's processes are listed once and remembered, and a process found there is read
    again before it counts.  Not found, the owner is dead if it started before the newest process
    listed (which was in the listing, alive: so was it, if it lived); one that started since may
    not be in it (a container that took a use since, in a program that lives long, or later in
    the same ``sc gc``): the processes are listed again before it is judged dead.  (Listed again
    for each dead owner, 300 leases of ended containers cost seconds on a host of 2,000
    processes; so the newest start time is found once per listing, not once per dead owner.)"""
    global _host_processes  # noqa: PLW0603 - remembered per process, listed again when it misses
    if pid_namespace() != INITIAL_PID_NAMESPACE:
        return None
    listed_now = _host_processes is None
    for _ in range(2):
        if _host_processes is None:
            _host_processes = _list_host_processes()
            if _host_processes is None:
                return None
        by_start, newest = _host_processes
        if any(_is_foreign_process(host_pid, pid_ns, pid, started) for host_pid in by_start.get(started, ())):
            return True
        if listed_now or started < newest:
            return False
        _host_processes, listed_now = None, True
    return False


def _list_host_processes() -> tuple[dict[int, list[int]], int] | None:
    """Every process of the host by its start time, and the newest start time; None if ``/proc``
    hides some (``hidepid`` hides those of other users, PID 1's among them, from all but root and
    its ``gid=``)."""
    if _stat(1) is None:
        return None
    by_start: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            fields = _stat(int(name))
            if fields is not None:  # (else it ended while we looked)
                by_start.setdefault(_started(fields), []).append(int(name))
    return by_start, max(by_start, default=0)


def _is_foreign_process(host_pid: int, pid_ns: int, pid: int, started: int) -> bool:
    """Whether the host's process ``host_pid`` is the live process ``pid`` of namespace ``pid_ns``
    that started at ``started`` (see :func:`foreign_process_alive`)."""
    fields = _stat(host_pid)
    status = _read(f"/proc/{host_pid}/status")
    if fields is None or status is None or _started(fields) != started or _ended(host_pid, fields[0]):
        return False
    nspid = _status_field(status, b"NSpid:")
    shown = str(pid).encode()
    try:
        own = os.stat(f"/proc/{host_pid}/ns/pid").st_ino
    except PermissionError:  # another user's, to a process that is not root: unknown is alive
        return True
    except OSError:  # it ended since it was read
        return False
    if own == pid_ns:
        return nspid[-1:] == [shown]
    return shown in nspid[1:-1]  # nested: which level is pid_ns's is not traced


#: The file of a cache's directory recording the boots of machine ids (see :class:`Boots`).
BOOTS = "boots"
#: How many boots of one machine id the record keeps (the latest): leases of an older one have
#: been judged by then, or are taken for another host's.
BOOTS_PER_MACHINE = 8
#: The most of the record that is read.
BOOTS_BYTES = 1 << 20
_BOOT_ID_CHARACTERS = frozenset("0123456789abcdef-")


class Boots:
    """The record of a cache's boots of machine ids (see "After a reboot" in the module's
    docstring), read at most once per process: ``open_root`` opens the cache's directory, and
    the record is written with ``mode``."""

    def __init__(self, open_root: Callable[[], int], mode: int) -> None:
        self._open_root, self._mode = open_root, mode
        self._lines: list[tuple[str, str]] | None = None
        self._noted = False

    def earlier(self, boot: str) -> bool:
        """Whether ``boot`` (not this one) was a boot of this machine."""
        return (machine_id(), boot) in self._read()

    def note_this_boot(self) -> None:
        """Record this boot as one of this machine, if it is not yet and this process is the
        host's: it has met a lease of this boot of another machine id."""
        if self._noted:
            return
        self._noted = True
        if not _sees_the_hosts_files():
            return
        mine = (machine_id(), boot_id())
        lines = self._read()
        if mine in lines:
            return
        own = [line for line in lines if line[0] == mine[0]][-(BOOTS_PER_MACHINE - 1):]
        lines = [line for line in lines if line[0] != mine[0]] + own + [mine]
        text = "".join(f"{machine} {boot}\n" for machine, boot in lines)
        try:
            root = self._open_root()
            try:
                write_atomic(f"/proc/self/fd/{root}/{BOOTS}", text.encode(), mode=self._mode)
            finally:
                os.close(root)
        except (OSError, CacheError) as e:
            # (Not recorded, the boot's leases of other machine ids stay alive after a reboot, as
            # unknown ones do: no use fails for it.)
            if isinstance(e, OSError):
                raise_if_over_limit(e)
            return
        self._lines = lines

    def _read(self) -> list[tuple[str, str]]:
        if self._lines is None:
            try:
                root = self._open_root()
                try:
                    found = read_control(BOOTS, BOOTS_BYTES, dir_fd=root) or b""
                finally:
                    os.close(root)
            except FileNotFoundError:
                found = b""
            except (OSError, CacheError) as e:
                if isinstance(e, OSError):
                    raise_if_over_limit(e)
                found = b""  # (unknown: another boot's leases of other machine ids stay alive)
            self._lines = [line for line in map(_boot_line, found.split(b"\n")) if line is not None]
        return self._lines


def _sees_the_hosts_files() -> bool:
    """Whether this process is the host's, whose machine id is the host's own: of the host's PID
    namespace and of its first process's mount namespace.  A container that shares the host's PID
    namespace (``docker --pid=host``, Apptainer) has files of its own, a machine id among them,
    which may be an image's that containers of other hosts have too.  (Only root may read the
    first process's namespace: another user's processes record nothing, and root's do.)"""
    if pid_namespace() != INITIAL_PID_NAMESPACE:
        return False
    try:
        return os.stat("/proc/self/ns/mnt").st_ino == os.stat("/proc/1/ns/mnt").st_ino
    except OSError:
        return False


def _boot_line(line: bytes) -> tuple[str, str] | None:
    """The machine id and boot id a line of the record names; None for anything else."""
    words = line.decode(errors="replace").split(" ")
    if len(words) != 2 or not words[0].isprintable() or ":" in words[0] or not words[0]:
        return None
    if not 0 < len(words[1]) <= 64 or not set(words[1]) <= _BOOT_ID_CHARACTERS:
        return None
    return words[0], words[1]


#: The start time of :meth:`Owner.ended`: no process's.
_ENDED = -1


class Owner:
    """A process, identified so that a reused pid, another namespace or another host is not
    mistaken for it; ``via`` is the (pid, start time) of a copy of it that ran sc, if any."""

    __slots__ = ("boot_id", "machine", "pid", "pid_ns", "start_time", "via")

    def __init__(
        self, boot_id: str, pid: int, start_time: int, pid_ns: int | None = None,
        machine: str | None = None, via: tuple[int, int] | None = None,
    ) -> None:
        self.boot_id, self.pid, self.start_time = boot_id, pid, start_time
        self.pid_ns, self.machine, self.via = pid_ns, machine, via

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Owner) and self.key == other.key

    def __hash__(self) -> int:
        return hash(self.key)

    def __repr__(self) -> str:
        return f"Owner.parse({self.key!r})"

    @classmethod
    def of(cls, pid: int) -> Owner | None:
        """The owner identity of the live process ``pid``; None if it cannot be seen, or has ended."""
        fields = _stat(pid)
        if fields is None or _ended(pid, fields[0]):
            return None
        return cls(boot_id(), pid, _started(fields), pid_namespace(), machine_id())

    @classmethod
    def in_its_namespace(cls, pid: int) -> Owner | None:
        """The live process ``pid`` as the PID namespace it is in names it, where that is not this
        process's: its pid there (the last of its ``NSpid``) and that namespace, as its own leases
        name it (a container's job, whose use a host's epilogue releases by the pid it has on the
        host).  None if it is of this namespace, cannot be seen (another user's namespace, to a
        process that is not root), or has ended."""
        fields = _stat(pid)
        status = _read(f"/proc/{pid}/status")
        if fields is None or status is None or _ended(pid, fields[0]):
            return None
        try:
            own = os.stat(f"/proc/{pid}/ns/pid").st_ino
        except OSError:
            return None
        shown = _status_field(status, b"NSpid:")[-1:]
        if own == pid_namespace() or not shown or not shown[0].isdigit():
            return None
        return cls(boot_id(), int(shown[0]), _started(fields), own, machine_id())

    @classmethod
    def ended(cls, pid: int) -> Owner:
        """Whichever process of this boot and PID namespace had ``pid`` and has ended: what
        ``--unuse --pid`` names once that process is gone, as a job's epilogue may.  Its uses are
        dead, and releasing one is what gc would do.  It holds no lease of its own."""
        return cls(boot_id(), pid, _ENDED, pid_namespace(), machine_id())

    @classmethod
    def current(cls) -> Owner:
        """This process (its start time is read once per process: a program calling use() in
        a loop asks for it at every call)."""
        global _own_start  # noqa: PLW0603 - remembered per process, as boot_id() is
        pid = os.getpid()
        # (Forgotten at a fork; kept with its pid for a child forked outside Python's fork hooks.)
        if _own_start is None or _own_start[0] != pid:
            started = start_time(pid)
            assert started is not None  # (this very process)
            _own_start = (pid, started)
        return cls(boot_id(), pid, _own_start[1], pid_namespace(), machine_id())

    @classmethod
    def parse(cls, key: str) -> Owner:
        fields = key.split(":")
        if len(fields) == 3:  # written before namespaces and hosts were recorded
            return cls(fields[0], int(fields[1]), int(fields[2]))
        if len(fields) not in (5, 7) or not fields[4]:
            raise ValueError(key)
        via = (int(fields[5]), int(fields[6])) if len(fields) == 7 else None
        return cls(fields[0], int(fields[1]), int(fields[2]), int(fields[3]), fields[4], via)

    @property
    def key(self) -> str:
        """The form that names the owner of a lease."""
        if self.pid_ns is None:
            return f"{self.boot_id}:{self.pid}:{self.start_time}"
        via = "" if self.via is None else f":{self.via[0]}:{self.via[1]}"
        return f"{self.boot_id}:{self.pid}:{self.start_time}:{self.pid_ns}:{self.machine}{via}"

    @property
    def host(self) -> str:
        """The machine id of the owner's host ("?" for leases that did not record it)."""
        return self.machine or "?"

    def shares_a_process(self, other: Owner) -> bool:
        """Whether ``other`` names one of the processes this owner names (itself or ``via``)."""
        if self.boot_id != other.boot_id or not (
            self.pid_ns is None or other.pid_ns is None or self.pid_ns == other.pid_ns
        ):
            return False
        if self.start_time == _ENDED:
            return self.pid in (other.pid, other.via and other.via[0]) and not other.alive()
        mine = {(self.pid, self.start_time), self.via}
        return (other.pid, other.start_time) in mine or (other.via is not None and other.via in mine)

    def alive(self, boots: Boots | None = None) -> bool:
        """Whether the owner may be alive: False only if a process that can know says it is dead.
        ``boots``: the record of the cache of the lease (see "After a reboot"), if it has one."""
        if self.boot_id != boot_id():
            if self.machine is None:
                return False  # an old lease of this host's previous boot
            if self.machine == machine_id() or self.machine in _forgotten:
                return False
            return boots is None or not boots.earlier(self.boot_id)
        if boots is not None and self.machine is not None and self.machine != machine_id():
            boots.note_this_boot()  # (a container's own machine id: after a reboot, this tells)
        if self.pid_ns is not None and self.pid_ns != pid_namespace():
            # Another container's process: its own namespace judges it, or a process that sees
            # every process of this host and finds it gone.
            found = foreign_process_alive(self.pid_ns, self.pid, self.start_time)
            if found is None or found:
                return True
            return self.via is not None and foreign_process_alive(self.pid_ns, *self.via) is not False
        if process_alive(self.pid, self.start_time):
            return True
        return self.via is not None and process_alive(*self.via)

    def __str__(self) -> str:
        """The owner as users read it: a pid, qualified when it is not of this host and namespace."""
        if self.machine is not None and self.boot_id != boot_id():
            # The whole machine id: what `sc gc --forget-host` takes.
            return f"{self.pid}@{self.machine}"
        if self.pid_ns is not None and self.pid_ns != pid_namespace():
            return f"{self.pid}@pid:[{self.pid_ns}]"
        return str(self.pid)


def process_of(pid: int) -> int:
    """The process that ``pid`` names: itself, or the one whose thread it is (a thread's id may
    be given for a process's, as ``--pid`` takes it, and lives no longer than its process), as
    ``/proc`` says; ``pid`` if it cannot be read."""
    tgid = _status_field(_read(f"/proc/{pid}/status") or b"", b"Tgid:")
    return int(tgid[0]) if tgid and tgid[0].isdigit() else pid


def job_of(pid: int) -> tuple[list[int], int | None]:
    """The processes from ``pid`` (which ran sc) up to the job it belongs to, the job last, and
    the last copy of the job's shell met on the way if there was one.

    The walk goes up from ``pid`` past the processes that live no longer than what they run:
    forking wrappers (:data:`FORKING_WRAPPERS`: ``timeout``, ``time``, ...) and copies of a
    shell (a subshell of ``$(...)``, a pipeline or ``( )`` has its parent's command name and
    command line, since it forked without exec).  It stops at a process it cannot read (another
    user's, under hidepid), at a process whose parent is outside this namespace, and below PID 1
    of the host (PID 1 of a container, often the job's shell itself, may be the job).
    """
    on_host = pid_namespace() == INITIAL_PID_NAMESPACE
    chain, copy = [pid], None
    while True:
        job = chain[-1]
        fields = _stat(job)
        if fields is None:
            break
        parent = int(fields[1])
        if parent == 0 or (parent == 1 and on_host):
            break
        comm = _comm(job)
        if comm in FORKING_WRAPPERS:
            chain.append(parent)
        elif _same_command(job, comm, parent):
            chain.append(parent)
            copy = job
        else:
            break
    return chain, copy


def _comm(pid: int) -> str | None:
    comm = _read(f"/proc/{pid}/comm")
    return None if comm is None else comm.strip().decode(errors="replace")


def _cmdline(pid: int) -> bytes | None:
    return _read(f"/proc/{pid}/cmdline")


def _read(path: str) -> bytes | None:
    """The contents of the small file ``path`` (of /proc, mostly), or None if it cannot be read.
    (Unbuffered: a warm use reads a dozen of these, and a buffered file costs more to set up than
    the read itself.)"""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise_if_over_limit(e)  # (a machine id or a process that cannot be read is not absent)
        return None
    try:
        chunks = []
        while chunk := os.read(fd, 4096):
            chunks.append(chunk)
    except OSError:
        return None
    finally:
        os.close(fd)
    return b"".join(chunks)


def _same_command(pid: int, comm: str | None, parent: int) -> bool:
    """Whether ``pid`` is a copy of ``parent`` made by fork without exec."""
    if comm is None or _comm(parent) != comm:
        return False
    line = _cmdline(pid)
    return line is not None and line == _cmdline(parent)


def key_alive(key: str, boots: Boots | None = None) -> bool:
    """Whether the owner stored as ``key`` is alive (a malformed key is not); ``boots``: as for
    :meth:`Owner.alive`."""
    try:
        return Owner.parse(key).alive(boots)
    except ValueError:
        return False


def owner_key(lease: str) -> str:
    """The key of the owner of lease ``lease`` (a lease file's name)."""
    return lease.rpartition(".")[0]


def _leases(entry: str) -> int | None:
    """A descriptor of ``entry``'s ``leases/``, opened without following a link; None if there is
    none, or something else is there (a link, a file), which holds no lease."""
    try:
        return open_directory(os.path.join(entry, "leases"))
    except (FileNotFoundError, NotADirectoryError):
        return None


def _lease_names(entry: str) -> list[str]:
    directory = _leases(entry)
    if directory is None:
        return []
    try:
        return os.listdir(directory)
    finally:
        os.close(directory)


class InterruptGuard(_thread._local):
    """Ctrl-C held back while a :func:`sharedcache.use` of the main thread has a lease that is
    not yet, or no longer, in the hands of its ``try``/``finally``.

    Python raises KeyboardInterrupt at whatever bytecode the main thread runs: after the lease's
    file is made and before ``use()`` has it, or halfway through its release, the lease was left
    for the life of the process (an interactive interpreter, a notebook's kernel that caught the
    interrupt).  ``use()`` arms the guard (:meth:`arm`: in the main thread, over Python's own
    handler only, a program's handler being the program's; or with the interrupt ignored, a
    script's background job, for the endings below alone) around its acquire and its release.
    The interrupt is then deferred (:attr:`pending`) while :attr:`deferring`, which
    :func:`add_lease` turns on for an acquire (:attr:`acquiring`) of this thread,
    :func:`remove_lease` for a release (:attr:`releasing`: ``sc --unuse``, whose outcome it is
    from then on) and ``use()`` for its release, and raised by :meth:`settle`.  The command line
    also has the signals that end it (SIGTERM, SIGHUP: :attr:`endings`) held back with the
    interrupt of an acquire, from the making of the lease on (:meth:`hold_endings`): blocked, as
    their default action ended ``sc`` with the lease made and its job the owner, and unblocked
    when the deferral stops (:meth:`stop_deferring`), unless ``sc --use`` has taken them over
    (:meth:`take_endings`); or earlier, while what the use made can still be undone
    (:attr:`undoable`: a population before its commit) and it waits for a busy index
    (:meth:`let_endings_act`).  One that comes in a ``with`` statement's
    call of a ``@scoped`` manager's ``__enter__`` or ``__exit__`` is raised at the next check,
    out of them: there it would leave the block without resuming the generator that releases.
    One that comes as a function marked by :func:`deferring_from_entry` is entered (the close of
    a lock file, in its caller's ``finally``) is deferred, and raised by that function.

    A use entered in the main thread may be left in another (a generator holding its block that
    a worker closes or drops, an ``ExitStack`` a worker closes).  :attr:`acquiring`,
    :attr:`releasing`, :attr:`deferring` and :attr:`pending` are therefore each thread's own (this is a
    ``threading.local``; only the slots :attr:`depth` and :attr:`thread` are shared), so that
    ``use()`` sets them by stores alone, with no call to tell the threads apart before them, and
    the handler, which runs in the main thread, reads the main thread's: another thread's
    release defers nothing of the main thread's, and a deferred interrupt is raised in the main
    thread only.  Another thread's :meth:`disarm` only counts the use down; the last one leaves
    our handler in place (only the main thread may set one), where, deferring nothing, it
    raises KeyboardInterrupt as Python's does, until the main thread's next use puts Python's
    back.
    """

    # Shared by the threads: the thread-local attributes are the class's defaults below until
    # a thread sets its own.
    __slots__ = ("depth", "thread")
    depth: int
    thread: int | None
    acquiring = releasing = deferring = pending = False
    #: The signals that end the process which the armed use's caller has held back with the
    #: interrupt (see :meth:`hold_endings`); and those of them that are blocked so, to unblock.
    endings: tuple[int, ...] = ()
    held: tuple[int, ...] = ()
    #: Whether the held endings' handlers would undo what the use made so far, raising in a
    #: population that has not committed yet (see :meth:`let_endings_act`).
    undoable = False

    def arm(self) -> bool:
        """Guard the calling thread's use from now on, deferring the interrupt until the caller
        is in its ``try`` (:meth:`settle`); whether it is guarded (only the main thread gets
        interrupts, and only Python's handler is replaced).  An ignored interrupt (a script's
        background job) stays so, and the use is guarded all the same, for its endings."""
        handler = _signal.getsignal(_signal.SIGINT)
        ignored = handler == _signal.SIG_IGN
        # Ours with no use armed: the last use was left in another thread, which may set no handler.
        if handler is not _interrupted and not ignored and (self.depth or handler is not _signal.default_int_handler):
            return False
        if not self.depth:
            self.pending = False  # (one that came as the last use's handler was put back)
        # Deferring before the handler is ours, and counted once it is, by stores alone: no
        # interrupt is checked for between them.
        self.deferring = True
        try:
            # (Ignored again, it is checked for the main thread all the same.)
            _signal.signal(_signal.SIGINT, _signal.SIG_IGN if ignored else _interrupted)
        except ValueError:  # not the main thread, the one that gets interrupts (asked so: no threading import)
            self.deferring = False
            return False
        self.depth += 1
        self.thread = _thread.get_ident()
        return True

    def settle(self) -> None:
        """Stop deferring; raise the interrupt deferred meanwhile."""
        self.acquiring = self.releasing = False
        self.stop_deferring()

    def hold_endings(self) -> None:
        """Block :attr:`endings` as the deferral of a lease's making starts, until it stops: one
        that comes meanwhile acts then, when the use is in its caller's ``try`` or has failed."""
        if self.endings and not self.held:
            blocked = _signal.pthread_sigmask(_signal.SIG_BLOCK, self.endings)
            self.held = tuple(signum for signum in self.endings if signum not in blocked)

    def take_endings(self) -> tuple[int, ...]:
        """The endings :meth:`hold_endings` blocked, handed to the caller, who unblocks them (or
        leaves them blocked for good): the deferral's end no longer does."""
        held, self.held = self.held, ()
        return held

    def let_endings_act(self) -> None:
        """Between two slices of a wait for a busy index outside a transaction: while
        :attr:`undoable`, unblock the held endings if one of them came, so that its handler's
        exception undoes the population there.  Held on, it acted only once the whole wait was
        over (up to ``--timeout``), past a batch system's grace before it kills."""
        if self.undoable and self.held and not _signal.sigpending().isdisjoint(self.held):
            _signal.pthread_sigmask(_signal.SIG_UNBLOCK, self.take_endings())

    def stop_deferring(self) -> None:
        """Stop deferring, and raise the interrupt deferred meanwhile; for a step that deferred
        it and made no lease after all (the use goes on elsewhere, or fails), where it would
        have been held back until a later step (a whole download) was done.  The endings held
        are unblocked first: one that came acts now."""
        self.deferring = False
        if self.held:
            _signal.pthread_sigmask(_signal.SIG_UNBLOCK, self.take_endings())
        if self.pending:
            self.pending = False
            raise KeyboardInterrupt

    def guards_here(self, *, releasing: bool = False) -> bool:
        """Whether an acquire (or a release) of the calling thread is guarded (:meth:`arm`, then
        :attr:`acquiring`, or :attr:`releasing`): the lease it makes (or removes) is deferred
        for, not one of a use taken inside the block of a guarded one, under a handler of the
        program's."""
        return (self.releasing if releasing else self.acquiring) and self.thread == _thread.get_ident()

    def disarm(self) -> None:
        """The end of an armed use, deferring until then: Python's handler back (unless the
        program put its own meanwhile), then the deferred interrupt raised.  In another thread
        than the one that armed it, the use is only counted down (see the class)."""
        self.depth -= 1
        if _thread.get_ident() != self.thread:
            self.deferring = False  # (this thread's own: it deferred nothing of the main thread's)
            return
        if not self.depth:
            self.thread = None
            self.endings = ()
            if _signal.getsignal(_signal.SIGINT) is _interrupted:
                _signal.signal(_signal.SIGINT, _signal.default_int_handler)
        self.settle()


INTERRUPTS = InterruptGuard()
INTERRUPTS.depth = 0  # the armed uses (a use inside another's block arms it again)
INTERRUPTS.thread = None  # the main thread, while armed


def _interrupted(signum: int, frame: FrameType | None) -> None:
    if INTERRUPTS.deferring or (frame is not None and frame.f_code in _DEFERRING_FROM_ENTRY):
        INTERRUPTS.pending = True
        return
    if frame is not None and frame.f_code in _SCOPE_STEPS:
        _thread.interrupt_main()  # (SIGINT) raised at the next check, out of the with statement's calls
        return
    raise KeyboardInterrupt


_SCOPE_STEPS = (Scope.__enter__.__code__, Scope.__exit__.__code__)

#: The code of the functions marked by :func:`deferring_from_entry`.
_DEFERRING_FROM_ENTRY: set[CodeType] = set()


def deferring_from_entry(step: Function) -> Function:
    """Mark ``step``, a function that defers Ctrl-C of its thread (sets ``INTERRUPTS.deferring``
    unless set, and calls ``INTERRUPTS.stop_deferring()`` at its end), or first calls another
    marked one that does, as
    deferring it from its entry on: Python checks for an interrupt as a function is entered,
    before its first instruction, where one would cut short a caller's ``finally`` that closes a
    descriptor, leaving it open for the life of the process."""
    _DEFERRING_FROM_ENTRY.add(step.__code__)
    return step


def add_lease(entry: str, owner: Owner) -> str:
    """Create a lease of ``owner`` in ``entry``; return its id."""
    deferred = not INTERRUPTS.deferring and INTERRUPTS.guards_here()
    if deferred:
        INTERRUPTS.deferring = True  # before the file is made: see InterruptGuard
        INTERRUPTS.hold_endings()
    lease = f"{owner.key}.{unique_name()}"
    try:
        put_lease(entry, lease)
    except BaseException:
        if deferred:  # (a base whose leases cannot be written is skipped: the use goes on in another)
            INTERRUPTS.stop_deferring()
        raise
    return lease


def put_lease(entry: str, lease: str) -> None:
    """Create the lease ``lease`` in ``entry``: a new one, or one given back."""
    directory = _leases(entry)
    if directory is None:
        raise CacheError("an entry's leases/ is not a directory (a link or a file put in its place?); "
                         "refusing to use the entry")
    try:
        create_empty(lease, exclusive=True, dir_fd=directory)
    finally:
        os.close(directory)


def scan_leases(
    entry: str, alive: dict[str, bool] | None = None, boots: Boots | None = None
) -> tuple[list[int], list[str]]:
    """The pids of the live owners of ``entry``'s leases, and the dead leases' ids.

    ``alive`` caches whether each owner is alive, across calls if the caller passes it (an
    owner often holds many leases: each ``sc --use`` of a job adds one); ``boots``: the record
    of the entry's cache (see :meth:`Owner.alive`)."""
    owners, dead = scan_lease_owners(entry, alive, boots)
    return [owner.pid for owner in owners], dead


#: How many of an entry's leases a hold or a release judges at most (see :func:`some_dead_leases`).
HOLD_JUDGES = 16


def some_dead_leases(entry: str, alive: dict[str, bool] | None = None, boots: Boots | None = None) -> list[str]:
    """The dead among at most :data:`HOLD_JUDGES` of ``entry``'s leases: all of them if there are
    no more, else a run of them (in the directory's order, wrapping around) that starts at a
    place given by this process's pid, so that different processes judge different ones.
    ``alive`` and ``boots``: as for :func:`scan_leases`.

    Holds and releases take this, not every lease: judging an owner reads ``/proc``, and a use of
    an entry with 500 live leases took 1.6x the time of one with a single one.  Dead leases still
    cannot pile up: each hold adds one lease and removes the dead among sixteen."""
    leases = _lease_names(entry)
    if len(leases) > HOLD_JUDGES:
        start = os.getpid() * 2654435761 % len(leases)  # (Knuth's multiplier: nearby pids spread)
        leases = (leases[start:] + leases[:start])[:HOLD_JUDGES]
    return _judged(leases, {} if alive is None else alive, boots)[1]


def any_live_lease(entry: str, alive: dict[str, bool], boots: Boots | None = None) -> bool:
    """Whether any of ``entry``'s leases has a live owner; stops at the first one.  ``alive`` and
    ``boots``: as for :func:`scan_leases` (owners judged already are not judged again)."""
    return any(_remembered_alive(owner_key(lease), alive, boots) for lease in _lease_names(entry))


def scan_lease_owners(
    entry: str, alive: dict[str, bool] | None = None, boots: Boots | None = None
) -> tuple[list[Owner], list[str]]:
    """The live owners of ``entry``'s leases (one per lease), and the dead leases' ids: as
    :func:`scan_leases`, with each owner whole, so that a listing can say which host and PID
    namespace a pid is of."""
    return _judged(_lease_names(entry), {} if alive is None else alive, boots)


def _judged(leases: list[str], alive: dict[str, bool], boots: Boots | None) -> tuple[list[Owner], list[str]]:
    """The live owners of ``leases`` (one per lease), and the dead ones; ``alive``: whether each
    owner key is alive, as known so far (filled in); ``boots``: as for :func:`scan_leases`."""
    live: list[Owner] = []
    dead: list[str] = []
    owners: dict[str, Owner] = {}
    for lease in leases:
        key = owner_key(lease)
        if not _remembered_alive(key, alive, boots):
            dead.append(lease)
            continue
        owner = owners.get(key)
        if owner is None:
            owner = owners[key] = Owner.parse(key)
        live.append(owner)
    return live, dead


def _remembered_alive(key: str, alive: dict[str, bool], boots: Boots | None) -> bool:
    """:func:`key_alive` of ``key``, judged once: remembered in ``alive``."""
    up = alive.get(key)
    if up is None:
        up = alive[key] = key_alive(key, boots)
    return up


def reclaim_leases(entry: str, dead: list[str]) -> int:
    """Remove the leases ``dead`` of ``entry`` (names in its ``leases/``); return how many were
    there to remove.  What is no file (a directory a member made there) is no lease, and is left
    alone."""
    if not dead:
        return 0
    directory = _leases(entry)
    if directory is None:
        return 0
    removed = 0
    try:
        for lease in dead:
            try:
                os.unlink(lease, dir_fd=directory)
            except (FileNotFoundError, IsADirectoryError, PermissionError):
                continue
            removed += 1
    finally:
        os.close(directory)
    return removed


def remove_lease(entry: str, lease: str) -> bool:
    """Remove the lease ``lease`` of ``entry``; whether it was there to remove.  (A name with a
    "/" names no lease: it would be a path below ``leases/``.)"""
    if INTERRUPTS.guards_here(releasing=True):
        INTERRUPTS.deferring = True  # before the file goes: see InterruptGuard
    return "/" not in lease and reclaim_leases(entry, [lease]) == 1


def lease_of(entry: str, owner: Owner) -> str | None:
    """A lease of ``owner`` in ``entry``, if it holds one."""
    for lease in sorted(_lease_names(entry)):
        try:
            if owner.shares_a_process(Owner.parse(owner_key(lease))):
                return lease
        except ValueError:
            continue  # a malformed name is nobody's lease
    return None
