"""The command line's grammar: the options table, the parser, and the help text.

The options are parsed from the table :data:`OPTIONS` by a small parser of our own rather than
``argparse``: a warm ``sc --use`` must cost little more than starting Python, and importing and
configuring ``argparse`` alone costs about half of a Python start (see CONTRIBUTING.md).
"""

from __future__ import annotations

from ..config.files import parse_seconds
from ..errors import SettingError, UsageError
from ..sizes import parse_budget, parse_size

TYPE_CHECKING = False  # see sharedcache.lean
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from ..repository.repositories import Fetch

ACTIONS = ("use", "unuse", "location", "run", "list", "gc", "config")
REPOSITORY_ACTIONS = ("use", "unuse", "location", "run")
#: The actions that take the options that are settings too (see sharedcache.config.files).
SETTING_ACTIONS = (*REPOSITORY_ACTIONS, "config")


class Option:
    """One option: its spellings, where it goes, and whether it takes a value; a ``repeated``
    one collects the value of each occurrence in a list, where another keeps the last."""

    __slots__ = ("actions", "convert", "dest", "flags", "help", "metavar", "repeated")

    def __init__(self, flags: tuple[str, ...], dest: str, help: str, *, metavar: str | None = None,
                 convert: Callable[[str], object] = str, actions: tuple[str, ...] = ACTIONS,
                 repeated: bool = False) -> None:
        self.flags, self.dest, self.help, self.metavar = flags, dest, help, metavar
        self.convert, self.actions, self.repeated = convert, actions, repeated


def _size_text(flag: str, parse: Callable[[str, str], int] = parse_size) -> Callable[[str], str]:
    """The conversion of a size option: its text, refused at once if ``parse`` reads no size in
    it.  A command that has no use for the size (``--size`` on ``--unuse``) ignores it, but not a
    typo that ``--use`` refuses: one list of options fails, or serves, all three alike."""
    def checked(text: str) -> str:
        parse(text, flag)
        return text

    return checked


OPTIONS = (
    Option(("-n", "--name"), "name", "repository name (default: derived from the loaders)",
           metavar="NAME", actions=REPOSITORY_ACTIONS),
    Option(("-s", "--size"), "size", "space the repository needs (10GB, 512MiB, bytes)",
           metavar="SIZE", convert=_size_text("--size"), actions=REPOSITORY_ACTIONS),
    Option(("-d", "--directories"), "directories",
           "candidate base directories (default: $SC_DIRECTORIES or /tmp:/var/tmp)",
           metavar="DIR[:DIR...]"),
    Option(("--keep",), "keep", "once unused, keep the repository as a cache entry (LRU)",
           actions=SETTING_ACTIONS),
    Option(("--max-size",), "max_size",
           "size budget of the base directory's repositories, in use or kept; it stays there until another "
           "is given (none: no budget)",
           metavar="SIZE", convert=_size_text("--max-size", parse_budget), actions=SETTING_ACTIONS),
    # Not for run, whose use is its own, held while its command runs: a --pid there would mislead.
    # (--location takes it, as it takes the other options of --use: one list of them serves both.)
    Option(("--pid",), "pid", "process owning the use (default: the job that ran sc)",
           metavar="PID", convert=int, actions=("use", "unuse", "location")),
    Option(("--timeout",), "timeout", "seconds to wait for a population, another process's or its own",
           metavar="SECONDS", convert=parse_seconds, actions=SETTING_ACTIONS),
    Option(("--connections",), "connections",
           "download over N connections at once (HTTP ranges; for throttled links)",
           metavar="N", convert=int, actions=SETTING_ACTIONS),
    Option(("--speed-limit",), "speed_limit",
           "fail a download slower than RATE bytes a second (default 1000) for --speed-time; 0: never",
           metavar="RATE", convert=lambda rate: parse_size(rate, "--speed-limit"), actions=SETTING_ACTIONS),
    Option(("--speed-time",), "speed_time",
           "seconds a download may stay under --speed-limit while sc runs (default 60)",
           metavar="SECONDS", convert=float, actions=SETTING_ACTIONS),
    Option(("--group",), "group",
           "use the cache shared by this group (name or gid) instead of your own",
           metavar="GROUP"),
    Option(("--proxy",), "proxy",
           "proxy chain 'A|B;C' (DIRECT: none); default: $SC_PROXY, else curl's http_proxy..., else config",
           metavar="PROXIES", actions=SETTING_ACTIONS),
    Option(("--offline",), "offline", "no network at all: serve what is here, fail at once on a miss",
           actions=SETTING_ACTIONS),
    Option(("--json",), "json", "print JSON", actions=("list",)),
    Option(("--forget-host",), "forget_host",
           "judge dead every use held on these hosts (machine ids; for hosts that are gone); repeatable",
           metavar="ID[,ID...]", actions=("gc",), repeated=True),
    # One name to an occurrence, never split: a repository's name may hold a comma.
    Option(("--evict",), "evict", "delete this repository now if unused, kept or not (to free a name); repeatable",
           metavar="NAME", actions=("gc",), repeated=True),
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
       sc gc [--forget-host ID,...]         reclaim dead uses, clean leftovers, apply budgets
       sc gc --evict NAME [--evict NAME...] delete these unused repositories, kept ones too
       sc config                            show the effective settings and where each comes from

settings are read from /etc/shared-cache/config, then $XDG_CONFIG_HOME/shared-cache/config, then
$SC_CONFIG ('key = value' lines), then the environment, then the options: later ones win.
"""
EXIT_STATUS = ("exit status: 0 success, 1 failure, 2 usage error, 130 interrupted; 'run' ends as COMMAND ends\n"
               "(its status, or the signal that killed it), 127 if COMMAND is not found, 126 if it cannot be run.\n")


def help_text() -> str:
    lines = [USAGE, "options:"]
    for option in OPTIONS:
        spelled = ", ".join(option.flags) + (f" {option.metavar}" if option.metavar else "")
        lines.append(f"  {spelled:32} {option.help}")
    return "\n".join(lines) + "\n\n" + loader_help() + "\n" + EXIT_STATUS


def loader_help() -> str:
    """The loader words, as the registry knows them: plugins' words show too."""
    from ..loaders.protocol import Source, Transform, Unpacker
    from ..loaders.registry import loader_words

    kinds: dict[str, list[str]] = {"sources": [], "transforms": [], "unpackers": []}
    for name, cls in loader_words():
        if cls is None:
            continue  # a broken plugin: using its word says why
        word = name if cls.argument is None else f"{name}:{cls.argument.split()[0].upper()}"
        kind = "sources" if issubclass(cls, Source) else (
            "unpackers" if issubclass(cls, Unpacker) else "transforms")
        assert issubclass(cls, (Source, Transform, Unpacker))
        kinds[kind].append(word)
    lines = ["loader stack (left to right: a source, or mirrors of it with a checksum, then transforms,",
             "then an unpacker):"]
    lines += [f"  {kind + ':':12} {'  '.join(words)}" for kind, words in kinds.items() if words]
    return "\n".join(lines) + "\n"


class Arguments:
    """The parsed command line."""

    def __init__(self) -> None:
        self.action: str | None = None
        self.loaders: list[str] = []
        self.command: list[str] = []
        self.name: str | None = None
        self.size: str | None = None
        self.directories: str | None = None
        self.max_size: str | None = None
        self.group: str | None = None
        self.forget_host: list[str] = []
        self.evict: list[str] = []
        self.pid: int | None = None
        self.timeout: float | None = None
        self.connections: int | None = None
        self.speed_limit: int | None = None
        self.speed_time: float | None = None
        self.proxy: str | None = None
        self.keep = self.offline = self.json = self.help = self.version = False
        #: How sources fetch: made by the command from the settings on a miss
        #: (sharedcache.config.files).
        self.fetch: Fetch | None = None
        self.quiet = self.verbose = 0
        #: The first option that took the word ``--`` after it as its value (``-n --``): if
        #: ``run`` then has no command, the ``--`` was meant to end the options.
        self.took_separator: str | None = None

    @property
    def verbosity(self) -> int:
        return self.verbose - self.quiet


def parse(argv: Sequence[str]) -> Arguments:
    """Parse ``argv``; raise :class:`UsageError` with a one-line reason if it is malformed."""
    args = Arguments()
    words = list(argv)
    while words:
        word = words.pop(0)
        if word == "--":
            # The end of the options, where no option takes it as its value (`-n --` names a
            # repository '--', as `--name=--` does, and as getopt reads it).
            args.command = words
            break
        if not word.startswith("-") or word == "-":
            # The subcommand is the first word that is no option's (sc -q gc, as cron lines say it).
            if args.action is None and not args.loaders and word in ACTIONS:
                args.action = word
            else:
                args.loaders.append(word)
        elif word in _ACTION_FLAGS:
            if args.action is not None:
                raise UsageError(f"{word} cannot be combined with {args.action}")
            args.action = _ACTION_FLAGS[word]
        elif word.startswith("--"):
            flag, has_value, value = word.partition("=")
            if flag in _ACTION_FLAGS:
                raise UsageError(f"option {flag} takes no value")
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
        if value == "--" and args.took_separator is None:
            args.took_separator = flag
    try:
        converted = option.convert(value)
    except SettingError as e:
        raise UsageError(f"option {flag} {e.reason}") from None
    except UsageError:  # (a size's, which says what a size is)
        raise
    except ValueError:
        raise UsageError(f"option {flag}: invalid value {value!r}") from None
    if option.repeated:
        getattr(args, option.dest).append(converted)
    else:
        setattr(args, option.dest, converted)


def _check(args: Arguments) -> Arguments:
    if args.help or args.version:
        return args
    if args.action is None:
        raise UsageError("say what to do: --use, --unuse, --location, run, list, gc or config")
    defaults = Arguments()
    for option in OPTIONS:
        given = getattr(args, option.dest)
        if given != getattr(defaults, option.dest) and args.action not in option.actions:
            raise UsageError(f"option {option.flags[-1]} does not apply to {args.action}")
    if args.action in REPOSITORY_ACTIONS:
        if not args.loaders:
            raise UsageError("no loader given (expected a source such as http:URL, then transforms)")
        if args.action == "run" and not (args.command and args.command[0]):  # '' names no program
            if args.took_separator is not None:
                flag, option = args.took_separator, _BY_FLAG[args.took_separator]
                raise UsageError(f"option {flag} took '--' as its value: give {flag} {option.metavar}, "
                                 f"or {option.flags[-1]}=-- if '--' is the value meant")
            raise UsageError("run needs '-- COMMAND [ARG...]' after the loaders")
    elif args.loaders:
        raise UsageError(f"{args.action} takes no loader ({args.loaders[0]!r})")
    if args.command and args.action != "run":
        raise UsageError(f"'-- COMMAND' goes with run, not with {args.action}")
    return args
