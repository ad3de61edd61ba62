"""The ``sc`` (alias ``shared-cache``) command line.

Turns arguments into calls of :mod:`sharedcache.repository` and outcomes into exit statuses:
0 success, 1 failure, 2 usage error; ``sc run`` exits with its command's status.  Paths are the
only thing printed on stdout by ``--use`` and ``--location``; every message goes to stderr as one
line starting with ``sc:``.  No traceback is shown for an error a user can cause.

The options are parsed from the table :data:`OPTIONS` by a small parser of our own rather than
``argparse``: a warm ``sc --use`` must cost little more than starting Python, and importing and
configuring ``argparse`` alone costs about half of a Python start.
"""

from __future__ import annotations

import os
import sys

from .errors import SharedCacheError, UsageError

TYPE_CHECKING = False  # the annotations need no import at run time, and typing is costly
if TYPE_CHECKING:
    from collections.abc import Sequence

    from .leases import Owner
    from .repository import Held, Repositories

ACTIONS = ("use", "unuse", "location", "run", "list", "gc")
MAX_CONNECTIONS = 32  # as sharedcache.ranged, which the warm path does not import


class Option:
    """One option: its spellings, where it goes, and whether it takes a value."""

    __slots__ = ("flags", "dest", "metavar", "convert", "help", "actions")

    def __init__(self, flags: tuple[str, ...], dest: str, help: str, *, metavar: str | None = None,
                 convert=str, actions: tuple[str, ...] = ACTIONS) -> None:  # type: ignore[no-untyped-def]
        self.flags, self.dest, self.help, self.metavar = flags, dest, help, metavar
        self.convert, self.actions = convert, actions


_REPOSITORY = ("use", "unuse", "location", "run")
OPTIONS = (
    Option(("-n", "--name"), "name", "repository name (default: derived from the loaders)",
           metavar="NAME", actions=_REPOSITORY),
    Option(("-s", "--size"), "size", "space the repository needs (10GB, 512MiB, bytes)",
           metavar="SIZE", actions=_REPOSITORY),
    Option(("-d", "--directories"), "directories",
           "candidate base directories (default: $SC_DIRECTORIES or /tmp:/var/tmp)",
           metavar="DIR[:DIR...]"),
    Option(("--keep",), "keep", "once unused, keep the repository as a cache entry (LRU)",
           actions=_REPOSITORY),
    Option(("--max-size",), "max_size", "size budget of the base directory's kept repositories",
           metavar="SIZE", actions=_REPOSITORY),
    Option(("--pid",), "pid", "process owning the use (default: the parent of sc)",
           metavar="PID", convert=int, actions=_REPOSITORY),
    Option(("--timeout",), "timeout", "seconds to wait for another process's population",
           metavar="SECONDS", convert=float, actions=_REPOSITORY),
    Option(("--connections",), "connections",
           "download over N connections at once (HTTP ranges; for throttled links)",
           metavar="N", convert=int, actions=_REPOSITORY),
    Option(("--group",), "group",
           "share a new base directory's cache with this group (name or gid)",
           metavar="GROUP", actions=_REPOSITORY),
    Option(("--json",), "json", "print JSON", actions=("list",)),
    Option(("-q", "--quiet"), "quiet", "print nothing but errors"),
    Option(("-v", "--verbose"), "verbose", "say what is done; show progress off a terminal too"),
    Option(("-h", "--help"), "help", "show this help and exit"),
    Option(("--version",), "version", "show the version and exit"),
)
_BY_FLAG = {flag: option for option in OPTIONS for flag in option.flags}
_ACTION_FLAGS = {"--use": "use", "--unuse": "unuse", "--location": "location"}

USAGE = """\
usage: sc --use      [OPTIONS] LOADER...    register a use; print the repository's path
       sc --unuse    [OPTIONS] LOADER...    release a use; the last release deletes it
       sc --location [OPTIONS] LOADER...    print the path if it is there; exit 1 if not
       sc run        [OPTIONS] LOADER... -- COMMAND [ARG...]
       sc list [--json]                     list the repositories
       sc gc                                reclaim dead uses, clean leftovers, apply budgets
"""
LOADERS = """\
loader stack (left to right: a source, then transforms):
  sources:     http:URL  file:PATH  dirac:LFN
  transforms:  md5:HEX sha1:HEX sha256:HEX sha512:HEX  tar zip  gunzip bunzip2 unxz unzstd

exit status: 0 success, 1 failure, 2 usage error; 'run' exits with COMMAND's status.
"""


def help_text() -> str:
    lines = [USAGE, "options:"]
    for option in OPTIONS:
        spelled = ", ".join(option.flags) + (f" {option.metavar}" if option.metavar else "")
        lines.append(f"  {spelled:32} {option.help}")
    return "\n".join(lines) + "\n\n" + LOADERS


class Arguments:
    """The parsed command line."""

    def __init__(self) -> None:
        self.action: str | None = None
        self.loaders: list[str] = []
        self.command: list[str] = []
        self.name = self.size = self.directories = self.max_size = self.group = None
        self.pid: int | None = None
        self.timeout: float | None = None
        self.connections = 1
        self.keep = self.json = self.help = self.version = False
        self.quiet = self.verbose = 0

    @property
    def verbosity(self) -> int:
        return self.verbose - self.quiet


def parse(argv: Sequence[str]) -> Arguments:
    """Parse ``argv``; raise :class:`UsageError` with a one-line reason if it is malformed."""
    args = Arguments()
    words = list(argv)
    if words and words[0] in ACTIONS:
        args.action = words.pop(0)
    if "--" in words:
        split = words.index("--")
        words, args.command = words[:split], words[split + 1 :]
    while words:
        word = words.pop(0)
        if not word.startswith("-") or word == "-":
            args.loaders.append(word)
        elif word in _ACTION_FLAGS:
            if args.action is not None:
                raise UsageError(f"{word} cannot be combined with {args.action}")
            args.action = _ACTION_FLAGS[word]
        elif word.startswith("--"):
            flag, has_value, value = word.partition("=")
            _take(args, flag, value if has_value else None, words)
        else:
            _take_short(args, word, words)
    return _check(args)


def _take_short(args: Arguments, word: str, rest: list[str]) -> None:
    """``-qv`` (flags together), ``-nNAME`` or ``-n NAME``."""
    for i in range(1, len(word)):
        option = _BY_FLAG.get(f"-{word[i]}")
        if option is not None and option.metavar and i + 1 < len(word):
            _take(args, f"-{word[i]}", word[i + 1 :], rest)
            return
        _take(args, f"-{word[i]}", None, rest)


def _take(args: Arguments, flag: str, value: str | None, rest: list[str]) -> None:
    option = _BY_FLAG.get(flag)
    if option is None:
        raise UsageError(f"unknown option {flag}")
    if option.dest in ("quiet", "verbose"):
        setattr(args, option.dest, getattr(args, option.dest) + 1)
        return
    if option.metavar is None:
        if value is not None:
            raise UsageError(f"option {flag} takes no value")
        setattr(args, option.dest, True)
        return
    if value is None:
        if not rest:
            raise UsageError(f"option {flag} needs a value ({option.metavar})")
        value = rest.pop(0)
    try:
        setattr(args, option.dest, option.convert(value))
    except ValueError:
        raise UsageError(f"option {flag}: invalid value {value!r}") from None


def _check(args: Arguments) -> Arguments:
    if args.help or args.version:
        return args
    if args.action is None:
        raise UsageError("say what to do: --use, --unuse, --location, run, list or gc")
    if not 1 <= args.connections <= MAX_CONNECTIONS:
        raise UsageError(f"--connections must be between 1 and {MAX_CONNECTIONS}")
    defaults = Arguments()
    for option in OPTIONS:
        given = getattr(args, option.dest)
        if given != getattr(defaults, option.dest) and args.action not in option.actions:
            raise UsageError(f"option {option.flags[-1]} does not apply to {args.action}")
    if args.action in _REPOSITORY:
        if not args.loaders:
            raise UsageError("no loader given (expected a source such as http:URL, then transforms)")
        if args.action == "run" and not args.command:
            raise UsageError("run needs '-- COMMAND [ARG...]' after the loaders")
    elif args.loaders:
        raise UsageError(f"{args.action} takes no loader ({args.loaders[0]!r})")
    if args.command and args.action != "run":
        raise UsageError(f"'-- COMMAND' goes with run, not with {args.action}")
    return args


# The owner of a use is the parent of sc by default.  It is read first thing: should the parent
# die while sc runs, sc is re-parented (to init or a subreaper), which must not inherit the use.
_PARENT = os.getppid()


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    verbose = "-v" in argv or "--verbose" in argv
    try:
        options = parse(argv)
        if options.help:
            print(help_text(), end="")
            return 0
        if options.version:
            from . import __version__

            print(f"sc (shared-cache) {__version__}")
            if options.verbose > 0:
                from .compression import backends

                for codec, library in backends().items():
                    print(f"{codec}: {library}")
            return 0
        return _run(options)
    except UsageError as e:
        print(f"sc: error: {e} (see 'sc --help')", file=sys.stderr)
        return e.exit_status
    except SharedCacheError as e:
        print(f"sc: error: {e}", file=sys.stderr)
        return e.exit_status
    except KeyboardInterrupt:
        print("sc: interrupted", file=sys.stderr)
        return 130
    except OSError as e:
        where = f": {e.filename}" if e.filename else ""
        print(f"sc: error: {e.strerror or e}{where}", file=sys.stderr)
        return 1
    except Exception as e:  # a bug: say so in one line, and show the details on request
        if verbose:
            raise
        print(f"sc: internal error ({type(e).__name__}: {e}); rerun with -v for details",
              file=sys.stderr)
        return 1


def _group(group: str | None) -> int | None:
    if group is None or group.isdigit():
        return None if group is None else int(group)
    import grp

    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise UsageError(f"--group {group}: no such group") from None


def _owner(options: Arguments) -> Owner:
    from .leases import Owner

    if options.pid is None and _PARENT == 1:
        raise SharedCacheError("the process that ran sc has exited; there is no one to own the use")
    pid = options.pid if options.pid is not None else _PARENT
    owner = Owner.of(pid)
    if owner is None:
        raise UsageError(f"--pid {pid}: no such process")
    return owner


def _run(options: Arguments) -> int:
    from .progress import Reporter
    from .repository import Repositories

    repositories = Repositories(
        options.directories, reporter=Reporter(options.verbosity), group=_group(options.group)
    )
    action = options.action
    if action == "use":
        print(_acquire(repositories, options, _owner(options)).path)
        return 0
    if action == "unuse":
        deleted = repositories.release(
            options.loaders, owner=_owner(options), name=options.name, keep=options.keep
        )
        repositories.reporter.info("repository deleted" if deleted else "use released")
        return 0
    if action == "location":
        path = repositories.locate(options.loaders, name=options.name)
        if path is None:
            repositories.reporter.info("no such repository")
            return 1
        print(path)
        return 0
    if action == "run":
        return _run_command(repositories, options)
    if action == "list":
        return _list(repositories, as_json=options.json)
    if action == "gc":
        for base, report in repositories.collect().items():
            done = ", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in report.items() if v)
            print(f"{base}: {done or 'nothing to do'}")
        return 0
    raise AssertionError(action)


def _acquire(repositories: Repositories, options: Arguments, owner: Owner) -> Held:
    return repositories.acquire(
        options.loaders, owner=owner, name=options.name, size=options.size, keep=options.keep,
        max_size=options.max_size, timeout=options.timeout, connections=options.connections,
    )


def _run_command(repositories: Repositories, options: Arguments) -> int:
    """Hold a use as sc's own process (also a kernel lock) while COMMAND runs."""
    import signal
    import subprocess

    from .leases import Owner

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


def _list(repositories: Repositories, *, as_json: bool) -> int:
    rows = repositories.listing()
    if as_json:
        import json

        print(json.dumps(rows, indent=2))
        return 0
    from .sizes import format_size

    print(f"{'NAME':24} {'STATE':17} {'SIZE':>10}  {'PATH':40} USERS")
    for row in rows:
        users = ",".join(str(p) for p in row["users"]) or "-"
        state = row["state"] + (" (kept)" if row["keep"] else "")
        print(f"{row['name']:24} {state:17} {format_size(row['size']):>10}  {row['path']:40} {users}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
