"""Who holds a use: the identity of a process, and whether it is still alive.

A use that outlives the command that took it (``sc --use`` exits at once; the job that asked
goes on) is recorded as a *lease* naming its owner process.  A pid alone is not an identity: pids
are reused, and after a reboot they mean nothing.  An owner is therefore the triple

    (boot id, pid, start time)

where the boot id is ``/proc/sys/kernel/random/boot_id`` and the start time is field 22 of
``/proc/PID/stat`` (clock ticks since boot).  An owner is alive exactly when this boot's process
with that pid started at that time.  A lease whose owner is not alive is dead and is reclaimed by
whoever touches the repository next (see :mod:`sharedcache.fscache`).

Leases are files in their entry's directory, named by their owner's key (see
:mod:`sharedcache.fscache`); this module only knows about processes.
"""

from __future__ import annotations

import os


_boot_id: str | None = None


def boot_id() -> str:
    global _boot_id
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
