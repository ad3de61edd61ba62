"""The commands of ``sc``, as a table from action to function.

Each command takes the parsed :class:`~sharedcache.cli.parser.Arguments` and the
:class:`~sharedcache.repository.repositories.Repositories` built from them, and returns the exit
status.  The settings are built here, at the edge, from the config files, the environment and
the options (:mod:`sharedcache.config.files`), and passed down as values.
"""

from __future__ import annotations

import os
import sys

from ..errors import SharedCacheError, UsageError

TYPE_CHECKING = False  # see sharedcache.lean
if TYPE_CHECKING:
    from collections.abc import Callable

    from ..config.files import Effective
    from ..engine.leases import Owner
    from ..repository.repositories import Held, Repositories
    from .parser import Arguments

# The owner of a use is the parent of sc by default.  It is read first thing: should the parent
# die while sc runs, sc is re-parented (to init or a subreaper), which must not inherit the use.
PARENT = os.getppid()


def run(options: Arguments) -> int:
    """Run the command ``options`` asks for; return its exit status."""
    from ..config import files, settings
    from ..progress import Reporter
    from ..repository.repositories import Repositories

    # An option not given is None, False, or a count (-v, -q) of 0.
    given = {setting.key: value for setting in files.SETTINGS
             if (value := getattr(options, setting.key, None)) is not None and value is not False
             and not (setting.key in ("verbose", "quiet") and value == 0)}
    effective = files.effective(given, os.environ)
    if options.action == "config":
        return show_config(effective)
    for key in ("directories", "max_size", "keep", "group", "timeout", "verbose", "quiet"):
        if key in effective:
            setattr(options, key, effective[key][0])
    options.fetch = files.fetch_policy(effective)
    repositories = Repositories(
        settings.directories(options.directories),
        reporter=Reporter(options.verbosity),
        group=_group(options.group),
    )
    assert options.action is not None
    return COMMANDS[options.action](repositories, options)


def use(repositories: Repositories, options: Arguments) -> int:
    print(_acquire(repositories, options, _owner(options)).path)
    return 0


def unuse(repositories: Repositories, options: Arguments) -> int:
    deleted = repositories.release(
        options.loaders, owner=_owner(options), name=options.name, keep=options.keep
    )
    repositories.reporter.info("repository deleted" if deleted else "use released")
    return 0


def location(repositories: Repositories, options: Arguments) -> int:
    path = repositories.locate(options.loaders, name=options.name)
    if path is None:
        repositories.reporter.info("no such repository")
        return 1
    print(path)
    return 0


def run_command(repositories: Repositories, options: Arguments) -> int:
    """Hold a use as sc's own process (also a kernel lock) while COMMAND runs."""
    import signal
    import subprocess

    from ..engine.leases import Owner

    command = options.command
    held = _acquire(repositories, options, Owner.current())
    try:
        with held.cache.load(held.name):
            try:
                child = subprocess.Popen(command, env=dict(os.environ, SC_PATH=str(held.path)))
            except OSError as e:
                print(f"sc: error: cannot run {command[0]}: {e.strerror}", file=sys.stderr)
                return 127
            forwarded = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
            previous = {s: signal.signal(s, lambda sig, _: child.send_signal(sig)) for s in forwarded}
            try:
                status = child.wait()
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)
    finally:
        repositories.release_held(held, keep=options.keep)
    return status if status >= 0 else 128 - status


def listing(repositories: Repositories, options: Arguments) -> int:
    rows = repositories.listing()
    if options.json:
        import json

        print(json.dumps(rows, indent=2))
        return 0
    from ..sizes import format_size

    print(f"{'NAME':24} {'STATE':17} {'SIZE':>10}  {'PATH':40} USERS")
    for row in rows:
        users = ",".join(str(p) for p in row["users"]) or "-"
        state = row["state"] + (" (kept)" if row["keep"] else "")
        print(f"{row['name']:24} {state:17} {format_size(row['size']):>10}  {row['path']:40} {users}")
    return 0


def gc(repositories: Repositories, options: Arguments) -> int:
    for base, report in repositories.collect().items():
        done = ", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in report.items() if v)
        print(f"{base}: {done or 'nothing to do'}")
    return 0


COMMANDS: dict[str, Callable[[Repositories, Arguments], int]] = {
    "use": use,
    "unuse": unuse,
    "location": location,
    "run": run_command,
    "list": listing,
    "gc": gc,
}


def show_config(effective: Effective) -> int:
    """``sc config``: every setting, its effective value and where it comes from."""
    from ..config.files import SETTINGS
    from ..config.settings import DEFAULT_DIRECTORIES, FetchPolicy
    from ..loaders.transport import shown_chain

    defaults = FetchPolicy()
    for setting in SETTINGS:
        key = setting.key
        if key in effective:
            value, where = effective[key]
        elif key == "directories":
            value, where = ":".join(DEFAULT_DIRECTORIES), "default"
        else:
            value, where = getattr(defaults, key, None), "default"
        if key == "proxy" and isinstance(value, str):  # user info in a proxy URL is not shown
            value = shown_chain(value)
        elif key == "proxy" and value is None:
            value = "(none: curl's variables apply)"
        text = "yes" if value is True else "no" if value is False else "(not set)" if value is None else value
        print(f"{key} = {text}  # {where}")
    return 0


def _acquire(repositories: Repositories, options: Arguments, owner: Owner) -> Held:
    return repositories.acquire(
        options.loaders, owner=owner, name=options.name, size=options.size, keep=options.keep,
        max_size=options.max_size, timeout=options.timeout, fetch=options.fetch,
    )


def _group(group: str | None) -> int | None:
    if group is None or group.isdigit():
        return None if group is None else int(group)
    import grp

    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise UsageError(f"--group {group}: no such group") from None


def _owner(options: Arguments) -> Owner:
    from ..engine.leases import Owner

    if options.pid is None and PARENT == 1:
        raise SharedCacheError("the process that ran sc has exited; there is no one to own the use")
    pid = options.pid if options.pid is not None else PARENT
    owner = Owner.of(pid)
    if owner is None:
        raise UsageError(f"--pid {pid}: no such process")
    return owner
