"""The ``sc`` (alias ``shared-cache``) command line.

Turns arguments into calls of :mod:`sharedcache.repository` and outcomes into exit statuses:
0 success, 1 failure, 2 usage error; ``sc run`` exits with its command's status.  Paths are the
only thing printed on stdout by ``--use`` and ``--location``; every message goes to stderr as one
line starting with ``sc:``.  No traceback is shown for an error a user can cause.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from collections.abc import Sequence

from .errors import SharedCacheError, UsageError

SUBCOMMANDS = ("use", "unuse", "location", "run", "list", "gc")
LOADER_HELP = """\
loader stack (left to right: a source, then transforms):
  sources:     http:URL  file:PATH  dirac:LFN
  transforms:  md5:HEX sha1:HEX sha256:HEX sha512:HEX  tar zip  gunzip bunzip2 unxz unzstd

exit status: 0 success, 1 failure, 2 usage error; 'run' exits with COMMAND's status.
environment: SC_DIRECTORIES (default candidate directories, DIR[:DIR...])
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _parser(action: str | None) -> argparse.ArgumentParser:
    prog = "sc" if action is None else f"sc {action}"
    parser = _Parser(
        prog=prog,
        description="Share read-only data between the processes of a host.",
        epilog=LOADER_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    if action is None:
        group = parser.add_mutually_exclusive_group(required=True)
        group.add_argument("--use", dest="action", action="store_const", const="use",
                           help="register a use of the repository; print its path")
        group.add_argument("--unuse", dest="action", action="store_const", const="unuse",
                           help="release a use; the last release deletes the repository")
        group.add_argument("--location", dest="action", action="store_const", const="location",
                           help="print the repository's path if it is there; exit 1 if not")
    parser.add_argument("-d", "--directories", metavar="DIR[:DIR...]",
                        help="candidate base directories (default: $SC_DIRECTORIES or /tmp:/var/tmp)")
    parser.add_argument("-q", "--quiet", action="count", default=0, help="print nothing but errors")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="say what is done, and show progress off a terminal")
    if action in ("list", "gc"):
        if action == "list":
            parser.add_argument("--json", action="store_true", help="print JSON")
        return parser
    parser.add_argument("-n", "--name", help="repository name (default: derived from the loaders)")
    parser.add_argument("-s", "--size", help="space the repository needs (10GB, 512MiB, bytes)")
    parser.add_argument("--keep", action="store_true",
                        help="once unused, keep the repository as a cache entry (LRU, --max-size)")
    parser.add_argument("--max-size", help="size budget of the base directory's kept repositories")
    parser.add_argument("--pid", type=int, help="process owning the use (default: sc's parent)")
    parser.add_argument("--timeout", type=float, metavar="SECONDS",
                        help="how long to wait for another process's population")
    parser.add_argument("loaders", nargs="*", metavar="LOADER")
    return parser


def _parse(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """Parse ``argv`` into options and, for ``run``, the command after ``--``."""
    argv = list(argv)
    command: list[str] = []
    action = argv[0] if argv and argv[0] in SUBCOMMANDS else None
    if action is not None:
        argv = argv[1:]
    if action == "run":
        if "--" not in argv:
            raise UsageError("run needs '-- COMMAND [ARG...]' after the loaders")
        split = argv.index("--")
        argv, command = argv[:split], argv[split + 1 :]
        if not command:
            raise UsageError("run needs a COMMAND after '--'")
    options = _parser(action).parse_args(argv)
    if action is not None:
        options.action = action
    if options.action in ("use", "unuse", "location", "run") and not options.loaders:
        raise UsageError("no loader given (expected a source such as http:URL, then transforms)")
    options.verbosity = options.verbose - options.quiet
    return options, command


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    verbose = "-v" in argv or "--verbose" in argv
    try:
        options, command = _parse(argv)
        return _run(options, command)
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


def _owner(options: argparse.Namespace):  # type: ignore[no-untyped-def]
    from .leases import Owner

    pid = options.pid if options.pid is not None else os.getppid()
    owner = Owner.of(pid)
    if owner is None:
        raise UsageError(f"--pid {pid}: no such process")
    return owner


def _run(options: argparse.Namespace, command: list[str]) -> int:
    from .progress import Reporter
    from .repository import Repositories

    repositories = Repositories(options.directories, reporter=Reporter(options.verbosity))
    action = options.action
    if action == "use":
        held = repositories.acquire(
            options.loaders, owner=_owner(options), name=options.name, size=options.size,
            keep=options.keep, max_size=options.max_size, timeout=options.timeout,
        )
        print(held.path)
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
        return _run_command(repositories, options, command)
    if action == "list":
        return _list(repositories, as_json=options.json)
    if action == "gc":
        for base, report in repositories.collect().items():
            done = ", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in report.items() if v)
            print(f"{base}: {done or 'nothing to do'}")
        return 0
    raise AssertionError(action)


def _run_command(repositories, options: argparse.Namespace, command: list[str]) -> int:  # type: ignore[no-untyped-def]
    from .leases import Owner

    held = repositories.acquire(
        options.loaders, owner=Owner.current(), name=options.name, size=options.size,
        keep=options.keep, max_size=options.max_size, timeout=options.timeout,
    )
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


def _list(repositories, *, as_json: bool) -> int:  # type: ignore[no-untyped-def]
    rows = repositories.listing()
    if as_json:
        import json

        print(json.dumps(rows, indent=2))
        return 0
    from .sizes import format_size

    print(f"{'NAME':24} {'STATE':10} {'SIZE':>10} {'USERS':14} PATH")
    for row in rows:
        users = ",".join(str(p) for p in row["users"]) or "-"
        state = row["state"] + (" (kept)" if row["keep"] else "")
        print(f"{row['name']:24} {state:10} {format_size(row['size']):>10} {users:14} {row['path']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
