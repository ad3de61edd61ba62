"""Leases: who holds a use (the identity of a process, and whether it is alive), and the lease
files that record it in an entry's directory.

A use that outlives the command that took it (``sc --use`` exits at once; the job that asked
goes on) is recorded as a *lease* naming its owner process.  A pid alone is not an identity: pids
are reused, and after a reboot they mean nothing.  An owner is therefore the triple

    (boot id, pid, start time)

where the boot id is ``/proc/sys/kernel/random/boot_id`` and the start time is field 22 of
``/proc/PID/stat`` (clock ticks since boot).  An owner is alive exactly when this boot's process
with that pid started at that time.  A lease whose owner is not alive is dead and is reclaimed by
whoever touches the entry next (see the protocol in :mod:`sharedcache.engine.fscache`).

A lease is an empty file ``<entry>/leases/<owner key>.<random id>``: creating it takes a use,
removing it releases that use, and its name says whose it is, so that reading an entry's leases
is one directory listing.  The callers hold the entry's lock while they add or remove leases
(see the protocol).
"""

from __future__ import annotations

import os

from .fsutil import create_empty, unique_name, unlink_if_present

_boot_id: str | None = None


def boot_id() -> str:
    global _boot_id  # noqa: PLW0603 - read once per process, then remembered
    if _boot_id is None:
        with open("/proc/sys/kernel/random/boot_id", "rb") as f:  # (an ascii codec costs an import)
            _boot_id = f.read().strip().decode()
    return _boot_id


def start_time(pid: int) -> int | None:
    """Start time of process ``pid`` in clock ticks since boot, or None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) is in parentheses and may itself contain spaces and parentheses.
    fields = stat[stat.rindex(b")") + 2 :].split()
    return int(fields[19])  # field 22 of the whole line


class Owner:
    """A process, identified so that a reused pid is not mistaken for it."""

    __slots__ = ("boot_id", "pid", "start_time")

    def __init__(self, boot_id: str, pid: int, start_time: int) -> None:
        self.boot_id, self.pid, self.start_time = boot_id, pid, start_time

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Owner) and self.key == other.key

    def __hash__(self) -> int:
        return hash(self.key)

    def __repr__(self) -> str:
        return f"Owner({self.boot_id!r}, {self.pid}, {self.start_time})"

    @classmethod
    def of(cls, pid: int) -> Owner | None:
        """The owner identity of the live process ``pid``; None if it does not exist."""
        started = start_time(pid)
        return None if started is None else cls(boot_id(), pid, started)

    @classmethod
    def current(cls) -> Owner:
        owner = cls.of(os.getpid())
        assert owner is not None
        return owner

    @classmethod
    def parse(cls, key: str) -> Owner:
        boot, pid, started = key.rsplit(":", 2)
        return cls(boot, int(pid), int(started))

    @property
    def key(self) -> str:
        """The form that names the owner of a lease."""
        return f"{self.boot_id}:{self.pid}:{self.start_time}"

    def alive(self) -> bool:
        return self.boot_id == boot_id() and start_time(self.pid) == self.start_time


def key_alive(key: str) -> bool:
    """Whether the owner stored as ``key`` is alive (a malformed key is not)."""
    try:
        return Owner.parse(key).alive()
    except ValueError:
        return False


def owner_key(lease: str) -> str:
    """The key of the owner of lease ``lease`` (a lease file's name)."""
    return lease.rpartition(".")[0]


def add_lease(entry: str, owner: Owner) -> str:
    """Create a lease of ``owner`` in ``entry``; return its id."""
    lease = f"{owner.key}.{unique_name()}"
    create_empty(os.path.join(entry, "leases", lease), exclusive=True)
    return lease


def scan_leases(entry: str, alive: dict[str, bool] | None = None) -> tuple[list[int], list[str]]:
    """The pids of the live owners of ``entry``'s leases, and the dead leases' ids.

    ``alive`` caches whether each owner is alive, across calls if the caller passes it (an
    owner often holds many leases: each ``sc --use`` of a job adds one)."""
    try:
        leases = os.listdir(f"{entry}/leases")
    except (FileNotFoundError, NotADirectoryError):
        return [], []
    if alive is None:
        alive = {}
    live, dead = [], []
    for lease in leases:
        key = owner_key(lease)
        up = alive.get(key)
        if up is None:
            up = alive[key] = key_alive(key)
        if up:
            live.append(Owner.parse(key).pid)
        else:
            dead.append(lease)
    return live, dead


def reclaim_leases(entry: str, dead: list[str]) -> int:
    """Remove the dead leases ``dead`` of ``entry``; return how many."""
    for lease in dead:
        unlink_if_present(os.path.join(entry, "leases", lease))
    return len(dead)


def lease_of(entry: str, owner: Owner) -> str | None:
    """A lease of ``owner`` in ``entry``, if it holds one."""
    try:
        leases = os.listdir(os.path.join(entry, "leases"))
    except (FileNotFoundError, NotADirectoryError):
        return None
    return next((lease for lease in sorted(leases) if owner_key(lease) == owner.key), None)
