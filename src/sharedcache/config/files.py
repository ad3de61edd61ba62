"""The configuration files, and how they layer with the environment and the command line.

Read in this order, each later one overriding what came before, key by key:

1. the site file ``/etc/shared-cache/config``;
2. the user file ``$XDG_CONFIG_HOME/shared-cache/config`` (``~/.config/shared-cache/config``);
3. the file named by ``SC_CONFIG``;
4. the environment variables (:data:`SETTINGS` names them);
5. the command line's options.

A missing file is skipped (except ``SC_CONFIG``'s, which must exist).  The format is
``key = value`` lines, as CVMFS's ``default.local`` or ``nix.conf``: a ``#`` that begins a line
or follows a space or tab starts a comment (one within a word is kept: a path
``/scratch/job#1``, a password), blank lines are ignored, the value is the rest of the line with
spaces trimmed.  A file that cannot be read or holds more than :data:`CONFIG_MAX_BYTES`, a line
without ``=``, an unknown key or a value of the wrong kind is an error of one line naming the
file, the line and the key (:class:`~sharedcache.errors.ConfigError`).

One exception to the order: a ``proxy`` set by a file yields to curl's proxy variables
(``http_proxy``...) set in the environment, which :mod:`sharedcache.loaders.transport` then reads.

Loading is on the warm path of ``sc --use``: a hand parser, no import but :mod:`os` (``tomllib``
alone would cost more than the whole warm overhead).  Reading checks each line's form, key and
kind of value; the fetch settings (proxy, rewrite rules, connections, timeouts, credentials) are
turned into a :class:`~sharedcache.config.settings.FetchPolicy` by :func:`fetch_policy`, which
the edge calls on a miss only: a use of ready data fetches nothing, so it neither imports nor
checks them (``sc config`` checks every one).
"""

from __future__ import annotations

import os
import stat

from ..errors import ConfigError, SettingError, SharedCacheError, UsageError, quoted

TYPE_CHECKING = False  # see sharedcache.lean
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any, TypeVar

    from .settings import FetchPolicy

    #: Every setting that is set: key -> (value, where it came from).
    Effective = dict[str, tuple[object, str]]
    Converted = TypeVar("Converted")

SITE_FILE = "/etc/shared-cache/config"
#: The most bytes a config file may hold: thousands of lines.  Every command reads the files, and
#: one named by mistake (``SC_CONFIG`` naming a disk image) was read whole to fail at its first
#: line: 830 MB of memory for a file of 400 MB, and "out of memory" under a limit.
CONFIG_MAX_BYTES = 1 << 20
#: The environment variables of curl's that name a proxy; any of them overrides a file's ``proxy``.
CURL_PROXY_VARIABLES = ("http_proxy", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY")


def _text(value: str) -> str:
    return value


def _directories(value: str) -> str:
    # (Empty, it would be refused where it is used, as "no candidate directory given": said
    # here, the line names the file and line, or the variable, that gave it.)
    if not any(value.split(":")):
        raise SettingError("", "names no directory (paths separated by ':')")
    return _without_nul(value, "a directory")


def _file(value: str) -> str:
    return _without_nul(value, "a file")


def _without_nul(value: str, named: str) -> str:
    # (Only a file's line can hold one: no system call takes the name, where Python raises, and
    # where it is used it could not say which file and line gave it.)
    if "\0" in value:
        raise SettingError("", f"cannot name {named}: it holds a NUL byte")
    return value


def _parsed_size(value: str, key: str, parse: Callable[[str, str], int]) -> int:
    """``value`` in bytes, as ``parse`` (:func:`~sharedcache.sizes.parse_size` or
    :func:`~sharedcache.sizes.parse_budget`) reads it; a :class:`SettingError` that says what is
    wrong with it (more than 8 EiB, or what a size is) if it is none."""
    try:
        return parse(value, key)
    except UsageError as e:
        raise SettingError(key, "must be a size: " + str(e).removeprefix(f"invalid {key}: ")) from None


def _budget(value: str) -> str:
    from ..sizes import parse_budget

    _parsed_size(value, "max_size", parse_budget)
    return value


def _rate(value: str) -> int:
    from ..sizes import parse_size

    return _parsed_size(value, "speed_limit", parse_size)


def parse_seconds(text: str) -> float:
    """A timeout written as text (``--timeout``, ``timeout =``): seconds, finite, not negative."""
    from .settings import seconds

    return seconds("timeout", float(text))


def _boolean(value: str) -> bool:
    return flag(value, "")


def flag(value: str, setting: str) -> bool:
    """A yes/no setting written as text: 1, yes, true, on or 0, no, false, off (any case)."""
    lowered = value.strip().lower()
    if lowered in ("1", "yes", "true", "on"):
        return True
    if lowered in ("0", "no", "false", "off", ""):
        return False
    raise SettingError(setting, f"must be yes or no (1/0, true/false, on/off), not {value!r}")


class Setting:
    """A key of the config file: how its text becomes a value, and the environment variables
    that set it too (the first one set wins).  ``paths``, for a setting that names paths, is what
    separates them ("" for one path): see :func:`_anchored`."""

    __slots__ = ("convert", "environment", "help", "key", "paths")

    def __init__(self, key: str, convert: Callable[[str], object], help: str,
                 environment: tuple[str, ...] = (), paths: str | None = None) -> None:
        self.key, self.convert, self.help, self.environment = key, convert, help, environment
        self.paths = paths


#: Every setting a config file may hold; the command line's options of the same name
#: (``max_size`` is ``--max-size``) override them.  The options that name one use (``--name``,
#: ``--size``, ``--pid``) are not settings.
SETTINGS = (
    Setting("directories", _directories, "candidate base directories, ':'-separated", ("SC_DIRECTORIES",), ":"),
    Setting("max_size", _budget, "size budget of a base directory's repositories, in use or kept; none: no budget"),
    Setting("keep", _boolean, "keep repositories once unused (LRU)"),
    Setting("group", _text, "use the cache this group shares in each base directory, instead of your own"),
    Setting("timeout", parse_seconds, "seconds to wait for a population, another process's or its own"),
    Setting("connections", int, "connections of one download"),
    Setting("connect_timeout", float, "seconds to make a connection, its name, tunnel and TLS included"),
    Setting("read_timeout", float, "seconds to wait for the next bytes of an answer, and for its head"),
    Setting("retries", int, "how many times a failed transfer is tried again"),
    Setting("speed_limit", _rate, "fail a download slower than this many bytes a second for speed_time; 0: never"),
    Setting("speed_time", float, "seconds a download may stay under speed_limit while sc runs"),
    Setting("proxy", _text, "proxy chain 'A|B;C' (DIRECT: no proxy)", ("SC_PROXY",)),
    Setting("no_proxy", _text, "hosts reached without a proxy", ("no_proxy", "NO_PROXY")),
    Setting("offline", _boolean, "no network at all: serve what is here", ("SC_OFFLINE",)),
    Setting("rewrite", _text, "site rewrite rules: 'PREFIX = MIRROR [MIRROR...]', ';'-separated"),
    Setting("ca_bundle", _file, "CAs to trust instead of the system's (a PEM file or a hashed directory)", paths=""),
    Setting("client_cert", _file, "client certificate (PEM; a grid proxy holds its key too)", paths=""),
    Setting("client_key", _file, "the client certificate's key, if in a file of its own", paths=""),
    Setting("bearer_token_file", _file, "a file holding a bearer token", paths=""),
    Setting("netrc", _file, "the .netrc file of basic-auth logins", paths=""),
    Setting("verbose", _boolean, "say what is done; progress lines off a terminal too"),
    Setting("quiet", _boolean, "print nothing but errors"),
)
_BY_KEY = {setting.key: setting for setting in SETTINGS}


def home_directory(environ: Mapping[str, str]) -> str | None:
    """The user's home: the ``HOME`` of ``environ``, else of this process (``environ`` may hold
    some variables only, as a caller's ``Credentials.discover({})``), else the user database's;
    the first that is an absolute path, or None.  (A uid without a user entry and without
    ``HOME``, as under ``env -i`` or a container runtime, has ``~`` left as it is, and a relative
    ``HOME`` is relative: taken for a home, either was the working directory's, where whoever may
    write there, as in /tmp, chose this user's settings and logins.)"""
    for home in (environ.get("HOME", ""), os.environ.get("HOME", "")):
        if os.path.isabs(home):
            return home
    import pwd  # (only here: a HOME that is set is the warm path's)

    try:
        home = pwd.getpwuid(os.getuid()).pw_dir
    except KeyError:  # a uid without a user entry
        return None
    return home if os.path.isabs(home) else None


def config_files(environ: Mapping[str, str]) -> list[tuple[str, str]]:
    """The config files to read, in order, each with which it is: ``site``, ``user`` or
    ``SC_CONFIG`` (which must exist).  The user's file is skipped without a home, as git skips its
    own; a relative ``XDG_CONFIG_HOME`` is ignored, as the XDG specification says (it would be
    the working directory's)."""
    files = [(SITE_FILE, "site")]
    config_home = environ.get("XDG_CONFIG_HOME", "")
    if not os.path.isabs(config_home):
        home = home_directory(environ)
        config_home = os.path.join(home, ".config") if home is not None else ""
    if config_home:
        files.append((os.path.join(config_home, "shared-cache", "config"), "user"))
    if environ.get("SC_CONFIG"):
        files.append((environ["SC_CONFIG"], "SC_CONFIG"))
    return files


def read_file(path: str, home: str | None, which: str) -> dict[str, tuple[object, str]]:
    """The settings ``path`` holds: key -> (value, where: ``path:line``), ``~`` in its paths
    standing for ``home``.  ``/dev/null`` holds none (``SC_CONFIG=/dev/null``, as
    ``GIT_CONFIG=/dev/null``).

    A file that another user could have written is refused (:func:`open_trusted`), as ssh
    refuses such a ``~/.ssh/config`` ("Bad owner or permissions"): its settings choose where data
    comes from (a rewrite rule; a proxy, and CAs to trust it by, which could then read every
    token sent).  ``which`` file it is (see :func:`config_files`) says whose it must be: the
    site's, root's; the others, this user's or root's; none writable by others.  The user's
    file, read without being named, must also be in a directory that only this user or root may
    write: in a ``HOME`` that is every user's (``HOME=/tmp``, as CI that runs with an arbitrary
    uid sets it), another user may have made ``.config/shared-cache`` first.  ``SC_CONFIG``
    names its own, which may be in ``/tmp``."""
    if path == os.devnull:
        return {}
    required = which == "SC_CONFIG"
    try:
        opened = open_trusted(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK, root_only=which == "site",
                              private=True, private_directory=which == "user")
        if isinstance(opened, str):
            raise ConfigError(f"{path}: refusing the config file: it {opened}")
        data = regular_file_bytes(opened, CONFIG_MAX_BYTES + 1)
        if data is not None and len(data) > CONFIG_MAX_BYTES:
            from .settings import larger_than  # (only here: the warm path neither imports nor needs it)

            raise larger_than(CONFIG_MAX_BYTES)
    except (FileNotFoundError, NotADirectoryError):  # (the latter under a HOME that is a file: /dev/null)
        if required:
            raise ConfigError(f"{path}: no such config file (named by SC_CONFIG)") from None
        return {}
    except PermissionError as e:
        if not required and _unseen(path):
            # Behind a directory closed to this user (sudo keeping HOME, a user namespace whose
            # HOME is the host root's): not this user's file, and not known to be there, as git
            # takes it; a file this user sees but may not read is said.
            return {}
        raise ConfigError(f"{path}: cannot read the config file: {e.strerror}") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config file: {e.strerror}") from None
    if data is None:
        raise ConfigError(f"{path}: the config file is not a regular file")
    found: dict[str, tuple[object, str]] = {}
    # (utf-8-sig: without the byte order mark some Windows editors start a file with.  A byte that
    # is no UTF-8 is kept as the file system's encoding keeps it, so that a path in another
    # encoding names that very directory, as the same path in SC_DIRECTORIES does.)
    for number, text in enumerate(text_lines(data.decode("utf-8-sig", "surrogateescape")), start=1):
        # A "#" within a word is a value's (a path "/scratch/job#1", a password), not a comment's:
        # cut there, "http://alice:2024#Secret@squid" was the host alice, shown with the password's start.
        comment = text.find("#")
        while comment > 0 and not text[comment - 1].isspace():
            comment = text.find("#", comment + 1)
        line = (text if comment < 0 else text[:comment]).strip()
        if not line:
            continue
        where = f"{path}:{number}"
        key, equals, value = line.partition("=")
        key = key.strip()
        setting = _BY_KEY.get(key) if equals else None
        if setting is None:
            from .settings import why_no_setting  # (only here: the warm path neither imports nor needs it)

            raise ConfigError(f"{where}: {why_no_setting(line, key if equals else None, _BY_KEY)}")
        _overlay(found, {key: (_convert(setting, value.strip(), where, home, in_file=True), where)})
    return found


def open_trusted(path: str, flags: int, *, root_only: bool = False, private: bool = False,
                 private_directory: bool = False) -> int | str:
    """A descriptor of the file ``path`` (``os.open`` with ``flags``) if no other user could have
    written what it holds, else why one could, as the words that follow the file's name in a
    message ("belongs to another user (uid 1001)"); :class:`OSError` if it cannot be opened.

    The file must belong to this user or root (``root_only``: to root), and ``private``, be
    writable by its owner alone.  ``private_directory``: so must the directory that holds it,
    which must belong to this user or root too, sticky bit or not, as sshd's ``StrictModes``
    wants the directories of ``authorized_keys``: a sticky directory keeps others from removing
    or renaming a name that is not theirs, not from making the ones its owner has not made, and
    nobody needs a config directory that others may write.  A symbolic link in a directory that
    others may write is not followed: anyone could have put it there.

    The file is opened relative to a descriptor of its directory, and each is judged by what was
    opened (``fstat``), never by a second lookup of a name that another user could change."""
    directory, name = os.path.split(path)
    # (A mere path reference: a directory that may be searched but not listed holds files too.)
    at = os.open(directory or ".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        holder = os.fstat(at)
        shared = holder.st_mode & 0o002
        try:
            fd = os.open(name or ".", flags | (os.O_NOFOLLOW if shared else 0), dir_fd=at)
        except OSError as e:
            import errno  # (only here: a file that opens is the warm path's)

            if shared and e.errno == errno.ELOOP:
                return "is a symbolic link in a directory that others may write"
            raise
    finally:
        os.close(at)
    try:
        why = _written_by_others(os.fstat(fd), root_only, private)
        if why is None and private_directory and (held := _written_by_others(holder, False, True)) is not None:
            why = f"is in {directory}, which {held}"
    except BaseException:
        os.close(fd)
        raise
    if why is not None:
        os.close(fd)
        return why
    return fd


def _written_by_others(status: os.stat_result, root_only: bool, private: bool) -> str | None:
    """Why another user could write the file or directory of ``status`` (see
    :func:`open_trusted`), or None."""
    owner = status.st_uid
    if owner != 0 and (root_only or owner != os.getuid()):
        return f"belongs to uid {owner}, not to root" if root_only else f"belongs to another user (uid {owner})"
    # (A site's file is root's, made under root's umask: its group may not write it either.)
    if private and status.st_mode & 0o022 and (status.st_mode & 0o002 or root_only or not _owners_own_group(status)):
        return f"is writable by other users (mode {stat.S_IMODE(status.st_mode):04o})"
    return None


def _owners_own_group(status: os.stat_result) -> bool:
    """Whether the group of the file or directory of ``status`` is its owner's private group:
    the owner's primary group, named as the owner, with no other members, as useradd makes one
    where each user has a group of their own (Red Hat's and Debian's default).  Such users'
    umask is 002 there, and every file of theirs group-writable: refused for it, every user's
    config file would have been.  (Debian's ssh allows such a group likewise.)"""
    import grp  # (a group-writable file's only: a warm use under umask 022 never asks)
    import pwd

    try:
        owner, group = pwd.getpwuid(status.st_uid), grp.getgrgid(status.st_gid)
    except KeyError:  # (no such user or group: nobody's own)
        return False
    return owner.pw_gid == group.gr_gid and group.gr_name == owner.pw_name and set(group.gr_mem) <= {owner.pw_name}


def regular_file_bytes(file: str | int, limit: int | None = None) -> bytes | None:
    """The bytes of ``file``, a path or a descriptor open on it, which this closes (its first
    ``limit``, if given); None if it is no regular file; :class:`OSError` if it cannot be opened
    or read.  A path is opened without blocking: a FIFO planted under its name would hang the
    open until a writer came (it is then no regular file)."""
    fd = os.open(file, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK) if isinstance(file, str) else file
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        chunks, size = [], 0
        while limit is None or size < limit:
            chunk = os.read(fd, 65536 if limit is None else min(65536, limit - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def text_lines(text: str) -> list[str]:
    """The lines of ``text`` as editors, ``grep -n`` and ``sed`` number them: each ended by a
    newline alone, without the carriage return before it that a Windows editor writes.
    (``str.splitlines`` also ends a line at a form feed, a vertical tab, U+0085 or U+2028: every
    line after one was named by the wrong number.)"""
    return [line.removesuffix("\r") for line in text.split("\n")]


def _unseen(path: str) -> bool:
    """Whether this user may not even look ``path`` up (a directory on its way is closed)."""
    try:
        os.stat(path)
    except PermissionError:
        return True
    except OSError:
        pass
    return False


def _convert(setting: Setting, text: str, where: str, home: str | None, *, in_file: bool) -> object:
    try:
        if setting.paths is not None:
            text = _anchored(text, setting.paths, home, in_file=in_file)
        return setting.convert(text)
    except SettingError as e:
        raise ConfigError(f"{where}: {setting.key} {e.reason}") from None
    except ValueError:
        raise ConfigError(f"{where}: {setting.key}: invalid value {quoted(text)}") from None


def _anchored(text: str, separator: str, home: str | None, *, in_file: bool, unknown_user_as_is: bool = False) -> str:
    """The paths of ``text`` (separated by ``separator``; "": one path) with a leading ``~`` made
    ``home``, and ``~user`` that user's home (see :func:`_at_home` for ``unknown_user_as_is``).
    A relative path is refused ``in_file``: a config
    file serves commands run from any directory, each of which read it from its own (jobs
    started in two directories used two caches, and ``~/scratch`` was ``$PWD/~/scratch``).
    One from a variable stays relative to the working directory, as one from an option does."""
    paths = [_at_home(path, home, unknown_user_as_is=unknown_user_as_is)
             for path in (text.split(separator) if separator else [text])]
    for path in paths:
        if in_file and path and not os.path.isabs(path):
            raise SettingError("", f"names the relative path {quoted(path)}: a config file is read from any "
                                   "directory, so give it from / or ~/")
    return separator.join(paths)


def _at_home(path: str, home: str | None, *, unknown_user_as_is: bool = False) -> str:
    """``path`` with a leading ``~`` made ``home``, and ``~user`` that user's home; the ``~user``
    of an unknown user, or a ``~`` without a ``home``, is a :class:`SettingError`, or left as it
    is if ``unknown_user_as_is``."""
    found = at_home(path, home)
    if found is not None:
        return found
    if unknown_user_as_is:
        return path
    raise SettingError("", f"names {quoted(path)}, but {why_not_at_home(path)}")


def at_home(path: str, home: str | None) -> str | None:
    """``path`` with a leading ``~`` made ``home`` (from :func:`home_directory`), and ``~user``
    that user's home; None if there is no such home (:func:`why_not_at_home` says why): left as
    it is, it would be a relative path, of whatever directory the process works in."""
    if path == "~" or path.startswith("~/"):
        if home is None:
            return None
        return home if path == "~" else os.path.join(home, path[2:])
    if not path.startswith("~"):
        return path
    found = os.path.expanduser(path)  # (~user: from the user database)
    return None if found.startswith("~") else found


def why_not_at_home(path: str) -> str:
    """Why :func:`at_home` found no home for ``path``."""
    if path == "~" or path.startswith("~/"):
        return "this user has no home (no HOME that is an absolute path, and none in the user database)"
    return f"there is no user {quoted(path[1:].partition('/')[0])}"


def paths_at_home(paths: object, environ: Mapping[str, str], given_as: str | None, *,
                  separator: str = ":") -> object:
    """The paths a Python caller gave (a string of paths separated by ``separator``, "" for one
    path; a path, or a sequence of them) with a leading ``~`` made the home, and ``~user`` that
    user's, as the shell makes them on a command line and as they are made in a variable or a
    file; anything else as it is, for the checks of its use.  ``given_as`` names the argument in
    the error of an unknown user; None (the paths of a standard variable, which sharedcache only
    passes on) leaves the path of an unknown user as it is, for the checks of its use."""
    home = home_directory(environ)

    def at_home(path: object, separator: str = "") -> object:
        if isinstance(path, os.PathLike):
            path = os.fspath(path)
        if not isinstance(path, str):
            return path
        try:
            return _anchored(path, separator, home, in_file=False, unknown_user_as_is=given_as is None)
        except SettingError as e:
            raise UsageError(f"{given_as} {e.reason}") from None

    if isinstance(paths, str):
        return at_home(paths, separator)
    if isinstance(paths, os.PathLike):
        return at_home(paths)
    if isinstance(paths, (list, tuple)):
        return [at_home(path) for path in paths]
    return paths


def effective(given: Mapping[str, object], environ: Mapping[str, str], *,
              given_as: str = "--{}") -> Effective:
    """Every setting that is set: key -> (value, where it came from), from the files, the
    environment and ``given`` (the command line's options, by key: ``--max-size`` as
    ``max_size``; ``given_as`` names where they came from, the key with ``_`` as ``-``)."""
    settings: dict[str, tuple[object, str]] = {}
    home = home_directory(environ)
    for path, which in config_files(environ):
        _overlay(settings, read_file(path, home, which))
    variables = {}
    for setting in SETTINGS:
        for variable in setting.environment:
            if environ.get(variable):
                variables[setting.key] = (_convert(setting, environ[variable], variable, home, in_file=False),
                                          variable)
                break
    _overlay(settings, variables)
    proxy = settings.get("proxy")
    if proxy is not None and proxy[1] not in _BY_KEY["proxy"].environment:  # from a file
        overriding = [variable for variable in CURL_PROXY_VARIABLES if environ.get(variable)]
        if overriding:
            settings["proxy"] = (None, ", ".join(overriding))
    _overlay(settings, {key: (value, given_as.format(key.replace("_", "-"))) for key, value in given.items()})
    return settings


#: The keys that are one setting between them, each the other's: how much sc says, ``verbose``
#: or ``quiet``.  Counted apart (their difference), a file's ``quiet`` cancelled ``-v``.
_OTHER_HALF = {"verbose": "quiet", "quiet": "verbose"}


def _overlay(settings: dict[str, tuple[object, str]], layer: Mapping[str, tuple[object, str]]) -> None:
    """Put the settings of ``layer`` (a later file's, line's, or the options') over ``settings``,
    key by key; a key of :data:`_OTHER_HALF` that the layer turns on without setting the other
    also turns that other off, saying that the layer did (``quiet = no  # --verbose``): turning
    one off leaves the other as it was (``verbose = yes`` then ``quiet = no`` is verbose)."""
    for key, entry in layer.items():
        other = _OTHER_HALF.get(key)
        if other is not None and entry[0] and other in settings and other not in layer:
            settings[other] = (False, entry[1])
        settings[key] = entry


def value(settings: Effective, key: str) -> Any:
    """The value of setting ``key`` (of the kind :data:`SETTINGS` gives it), or None if unset."""
    return settings[key][0] if key in settings else None


def converted(settings: Effective, key: str, convert: Callable[[Any], Converted]) -> Converted:
    """``convert`` applied to the value of setting ``key`` (None if unset), where what it needs is
    above this module (a group's name made its gid); its :class:`SettingError` names where the
    value was set, as :func:`fetch_policy`'s do."""
    try:
        return convert(value(settings, key))
    except SettingError as e:
        raise _where_set(settings, e) from None


def fetch_when_needed(settings: Effective, environ: Mapping[str, str],
                      given: Mapping[str, object]) -> Callable[[], FetchPolicy]:
    """The fetch policy of ``settings`` as the repositories take it: a function that makes it,
    which only a miss calls (a use of ready data, a release, a location fetch nothing, so they
    neither import the fetch settings nor read credentials, and a bad one of a file or variable
    does not stop them).  The fetch settings of ``given`` (the caller's own options) are checked
    now, so that a bad option is an error at once, as any option is, with the values of the
    other fetch settings that they go with (``speed_time = 0`` is valid with a ``speed_limit``
    of 0 from a file).  A file's or variable's bad value met there is left to a miss: it is set
    aside, its built-in value taken instead, and the check goes on, lest it hide a bad option."""
    checked = {key: settings[key] for key in _FETCH_KEYS if key in settings}
    if any(key in given for key in checked):
        from .settings import FetchPolicy  # (only with a fetch option: a miss imports it anyway)

        while any(key in given for key in checked):
            try:
                FetchPolicy(**_fetch_values(checked))
                break
            except SettingError as e:
                if e.setting in given:
                    raise _where_set(settings, e) from None
                del checked[e.setting]
    return lambda: fetch_policy(settings, environ)


_FETCH_KEYS = ("connections", "connect_timeout", "read_timeout", "retries", "speed_limit", "speed_time",
               "proxy", "no_proxy", "offline")
_CREDENTIAL_KEYS = ("ca_bundle", "client_cert", "client_key", "bearer_token_file", "netrc")


def fetch_policy(settings: Effective, environ: Mapping[str, str]) -> FetchPolicy:
    """The fetch policy ``settings`` make, with the credentials they and the standard variables
    of ``environ`` give.  An invalid value names where it was set: an option's is a
    :class:`UsageError`, a file's or a variable's a :class:`ConfigError`."""
    from .settings import Credentials, FetchPolicy, rewrite_rules

    try:
        credentials = Credentials.discover(environ, **{key: value(settings, key) for key in _CREDENTIAL_KEYS},
                                           ca_bundle_from=settings["ca_bundle"][1] if "ca_bundle" in settings else None)
        rewrites = rewrite_rules(value(settings, "rewrite") or "")
        return FetchPolicy(**_fetch_values(settings), credentials=credentials, rewrites=rewrites)
    except SettingError as e:
        raise _where_set(settings, e) from None


def _fetch_values(settings: Effective) -> dict[str, Any]:
    """The arguments of :class:`FetchPolicy` that the fetch settings of ``settings`` give."""
    # (A None is passed on: a file's proxy that curl's variables override is None, as
    # FetchPolicy's own default is.)
    return {key: settings[key][0] for key in _FETCH_KEYS if key in settings}


def _where_set(settings: Effective, error: SettingError) -> SharedCacheError:
    """``error``, of a value of ``settings``, as one line naming where that value was set: an
    option's is a :class:`UsageError`, a file's or a variable's a :class:`ConfigError`."""
    if error.setting not in settings:  # a standard variable (BEARER_TOKEN), not one of the settings
        return ConfigError(f"{error.setting}: {error.reason}")
    where = settings[error.setting][1]
    if where.startswith(("--", "use(")):  # the caller's own input
        return UsageError(f"{where} {error.reason}")
    return ConfigError(f"{where}: {error.setting} {error.reason}")
