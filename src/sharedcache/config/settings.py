"""The fetch settings as values: how a download fetches (:class:`FetchPolicy`), with its
credentials (:class:`Credentials`), proxy chain (:func:`proxy_chain`) and site rewrite rules
(:func:`rewrite_rules`).

A value is validated once, when it is built, so that the code that uses it need not check it
again; invalid input raises :class:`~sharedcache.errors.SettingError` naming the setting, which
the edge turns into one line saying where the value came from.  The environment is read here
only by :meth:`Credentials.discover` (``SSL_CERT_FILE``, ``X509_USER_PROXY``,
``BEARER_TOKEN``...), which the edge calls, and for the home that a leading ``~`` of a
credential's path stands for (``HOME``).  Which proxy a URL goes through when no chain is set
(curl's variables ``http_proxy``, ``https_proxy``, ``all_proxy``, ``no_proxy``) is decided per
URL by :mod:`sharedcache.loaders.transport`.

A use of ready data fetches nothing, so this module is not on the warm path: the edge builds a
fetch policy only on a miss (:mod:`sharedcache.config.files`).
"""

from __future__ import annotations

import errno
import os
import stat
from _thread import TIMEOUT_MAX  # (threading's, without importing threading)

from ..errors import (
    ConfigError,
    SettingError,
    host_and_port,
    pathless_problem,
    quoted,
    shown_proxy,
    split_user_info,
    unparsed_url,
    user_info_problem,
    with_folded_origin,
    with_path,
    without_user_info,
)

TYPE_CHECKING = False  # see sharedcache.lean
if TYPE_CHECKING:
    from collections.abc import Collection, Mapping, Sequence

    #: A path as a program gives it.
    GivenPath = str | os.PathLike[str]

#: At most this many connections for one download (``--connections``).
MAX_CONNECTIONS = 32
#: The most seconds a timeout may be: the longest wait that Python's locks and sockets take (about
#: 292 years; 1e308 seconds, finite, made a deadline that no timeout could be computed from).
MAX_SECONDS = TIMEOUT_MAX
#: The member of a proxy chain that means "no proxy".
DIRECT = "DIRECT"
#: The schemes of SOCKS proxies, as curl names them: through ``socks5h`` and ``socks4a`` the
#: proxy resolves a URL's host name, through the others this process does.
SOCKS_SCHEMES = ("socks5h", "socks5", "socks4a", "socks4")

ProxyChain = tuple[tuple[str, ...], ...]


#: The standard variables that name the CAs a TLS connection trusts.
_CA_VARIABLES = ("SSL_CERT_FILE", "SSL_CERT_DIR", "CURL_CA_BUNDLE")


class Credentials:
    """Where TLS trust and authentication come from: paths and the token, never shown.

    ``ca_file``, ``ca_dir``: the certificate authorities to trust instead of the system's (a PEM
    bundle, a hashed directory); ``grid_ca_dir``: a directory of grid CAs trusted in addition
    (``X509_CERT_DIR``).  ``cert_file``, ``key_file``: a client certificate and its key (PEM; the
    key may be in the certificate's file, as in a grid proxy).  ``bearer_token``: a token for
    ``Authorization: Bearer`` over HTTPS, or ``bearer_token_file``, a file that holds one (read
    when a download needs it).  ``netrc``: the ``.netrc`` file of basic-auth logins per host.
    Each ``*_from`` field says where the value came from (a variable, a setting), for messages;
    ``ca_given_with``, what gives the CAs to trust (the ``ca_bundle`` setting and the file and
    line that set it, or the standard variables), for the message of an untrusted certificate:
    :meth:`discover` sets it, and None is a program's own ``Credentials``.  ``variables`` are the
    standard variables whose paths were taken, each with its path, which :meth:`check_variables`
    checks; ``found_with``, the credential settings that :meth:`discover` took from a standard
    variable or a default path, each with what gave it (``~/.netrc``), which :meth:`found` shows.
    A leading ``~`` of a path is the home (``$HOME``), and ``~user`` that user's, as in a config
    file or an ``SC_*`` variable: no shell expands what a program gives (``ca_dir`` and
    ``grid_ca_dir`` are lists separated by ``:``, as OpenSSL reads them).  A path is text or an
    :class:`os.PathLike`, a token text: anything else is a :class:`SettingError` naming the field,
    here and in :meth:`discover`, as :class:`FetchPolicy` refuses its own.  The values are read
    only when a download needs them (:mod:`sharedcache.loaders.credentials`); the token never
    appears in ``repr``.  Without ``ca_file`` or ``ca_dir``, the CAs are OpenSSL's default ones,
    never those that ``SSL_CERT_FILE`` and ``SSL_CERT_DIR`` name (:meth:`discover` reads those).
    """

    __slots__ = (
        "bearer_token",
        "bearer_token_file",
        "ca_dir",
        "ca_file",
        "ca_given_with",
        "cert_file",
        "found_with",
        "grid_ca_dir",
        "key_file",
        "netrc",
        "token_from",
        "variables",
    )

    def __init__(self, *, ca_file: GivenPath | None = None, ca_dir: GivenPath | None = None,
                 grid_ca_dir: GivenPath | None = None, cert_file: GivenPath | None = None,
                 key_file: GivenPath | None = None, bearer_token: str | None = None,
                 bearer_token_file: GivenPath | None = None, netrc: GivenPath | None = None,
                 token_from: str | None = None, variables: Sequence[tuple[str, GivenPath]] = ()) -> None:
        for field, text in (("bearer_token", bearer_token), ("token_from", token_from)):
            if text is not None and not isinstance(text, str):
                raise SettingError(field, f"must be text, not {type(text).__name__}")
        if not isinstance(variables, (tuple, list)) or not all(
                isinstance(pair, (tuple, list)) and len(pair) == 2 and isinstance(pair[0], str) for pair in variables):
            raise SettingError("variables", "must be pairs of a variable's name and its path")

        def at_home(name: str, path: object, given_as: str) -> str | None:
            separator = ":" if name in ("SSL_CERT_DIR", "ca_dir", "grid_ca_dir") else ""
            return _at_home(_path(name, path, separator), given_as, separator)

        # (The variables first: a path taken from one is refused naming it.)
        variable_paths = tuple((name, path) for name, given in variables
                               if (path := at_home(name, given, name)) is not None)
        paths = {name: at_home(name, path, f"Credentials({name}=...)")
                 for name, path in (("ca_file", ca_file), ("ca_dir", ca_dir), ("grid_ca_dir", grid_ca_dir),
                                    ("cert_file", cert_file), ("key_file", key_file),
                                    ("bearer_token_file", bearer_token_file), ("netrc", netrc))}
        self._assign(bearer_token=bearer_token, token_from=token_from, ca_given_with=None,
                     variables=variable_paths, found_with=(), **paths)

    def _assign(self, *, ca_file: str | None, ca_dir: str | None, grid_ca_dir: str | None, cert_file: str | None,
                key_file: str | None, bearer_token: str | None, bearer_token_file: str | None,
                netrc: str | None, token_from: str | None, ca_given_with: str | None,
                variables: tuple[tuple[str, str], ...], found_with: tuple[tuple[str, str], ...]) -> None:
        """Check and set the fields, their paths as they are to be used (``~`` made the home)."""
        # An empty path is none (``netrc =`` in a user's file: no .netrc), for every use of the
        # fields alike: a token file "" was opened, and a client key "" wanted a certificate.
        ca_file, ca_dir, grid_ca_dir, cert_file, key_file, bearer_token_file, netrc = (
            path or None for path in (ca_file, ca_dir, grid_ca_dir, cert_file, key_file, bearer_token_file, netrc))
        if key_file is not None and cert_file is None:
            raise SettingError("client_key", "needs a client_cert to go with it")
        if bearer_token is not None and not one_word(bearer_token):
            raise SettingError(token_from or "bearer_token", "must be one word of printable ASCII characters")
        self.ca_file, self.ca_dir, self.grid_ca_dir = ca_file, ca_dir, grid_ca_dir
        self.cert_file, self.key_file = cert_file, key_file
        self.bearer_token = None if bearer_token is None else bearer_token.strip()
        self.bearer_token_file, self.netrc = bearer_token_file, netrc
        self.token_from = token_from or ("bearer_token" if bearer_token is not None else bearer_token_file)
        self.ca_given_with = ca_given_with
        self.variables = variables
        self.found_with = found_with

    @classmethod
    def discover(cls, environ: Mapping[str, str] = os.environ, *, ca_bundle: GivenPath | None = None,
                 client_cert: GivenPath | None = None, client_key: GivenPath | None = None,
                 bearer_token_file: GivenPath | None = None, netrc: GivenPath | None = None,
                 ca_bundle_from: str | None = None) -> Credentials:
        """The credentials of this process: the settings given, else the standard variables.

        CAs: ``ca_bundle`` (a file or a directory), else ``SSL_CERT_FILE`` and ``SSL_CERT_DIR``
        (as OpenSSL reads them), else curl's ``CURL_CA_BUNDLE``, else the system's;
        ``X509_CERT_DIR`` adds grid CAs (default ``/etc/grid-security/certificates`` when it
        exists).  Client certificate: ``client_cert``
        and ``client_key``, else ``X509_USER_PROXY``, else ``/tmp/x509up_u<uid>`` if it is the
        user's own file.  Bearer token in the WLCG discovery order: ``bearer_token_file``, else
        ``BEARER_TOKEN``, ``BEARER_TOKEN_FILE``, ``$XDG_RUNTIME_DIR/bt_u<uid>``, ``/tmp/bt_u<uid>``
        (the first that is set or exists; in /tmp, only the user's own file).  ``.netrc``:
        ``netrc``, else ``$NETRC``, else ``~/.netrc`` (none without a home: see
        :func:`~sharedcache.config.files.home_directory`).  A setting given empty (``netrc=""``,
        a file's ``netrc =``) is none, and what would come after it is not looked for: no
        ``.netrc``, no client certificate, no bearer token, and OpenSSL's default CAs (not
        those that ``SSL_CERT_FILE`` names).
        Nothing is read here but variables and whether a few files exist.  A setting given that
        names nothing this user can read, or a directory where a file is wanted, is a
        :class:`SettingError`; the paths of ``SSL_CERT_FILE``, ``SSL_CERT_DIR``, ``CURL_CA_BUNDLE``
        and ``NETRC``, where taken, are checked by :meth:`check_variables`, which a download calls
        (the other standard variables are not: a stale ``X509_USER_PROXY`` fails only the HTTPS
        downloads that would present it).  A leading ``~`` in the path of a variable is the home
        of ``environ``; that of an unknown user is left as it is, for those checks to refuse, as a
        path that names nothing is: it fails only the downloads that use it.  ``ca_bundle_from``
        is where ``ca_bundle`` was set (``FILE:LINE``, as ``sc config`` shows it): the message of
        an untrusted certificate names it, since the variables are not read then."""
        from .files import home_directory

        uid = os.getuid()

        def variable(name: str, separator: str = "") -> str | None:
            return _at_home(environ.get(name) or None, None, separator, environ=environ)

        settings: dict[str, str | None] = {
            setting: _at_home(_path(setting, path), f"Credentials.discover({setting}=...)", environ=environ)
            for setting, path in (("ca_bundle", ca_bundle), ("client_cert", client_cert), ("client_key", client_key),
                                  ("bearer_token_file", bearer_token_file), ("netrc", netrc))}
        ca_bundle, client_cert, client_key, bearer_token_file, netrc = settings.values()
        for setting, path in settings.items():
            # (An empty one is none, not a path to check: see _assign.)
            problem = unusable_path(path, directory=setting == "ca_bundle") if path else None
            if problem is not None:
                raise SettingError(setting, problem)
        ca_file = ca_dir = None
        variables: tuple[tuple[str, str | None], ...] = ()
        found_with: dict[str, str] = {}

        def taken(setting: str, where: str, found: str | None) -> str | None:
            """``found``, a value that ``where`` gave ``setting``, recorded as such if it is one."""
            if found is not None:
                found_with[setting] = where
            return found

        if ca_bundle is not None:
            ca_dir, ca_file = (ca_bundle, None) if os.path.isdir(ca_bundle) else (None, ca_bundle)
            ca_given_with = f"the ca_bundle setting ({ca_bundle_from})" if ca_bundle_from \
                else "Credentials.discover(ca_bundle=...)"
        else:
            ca_given_with = "SSL_CERT_FILE, SSL_CERT_DIR or the ca_bundle setting"
            ca_file, ca_dir = variable("SSL_CERT_FILE"), variable("SSL_CERT_DIR", ":")
            variables = (("SSL_CERT_FILE", ca_file), ("SSL_CERT_DIR", ca_dir))
            if ca_file is None and ca_dir is None:
                ca_file = variable("CURL_CA_BUNDLE")
                variables = (("CURL_CA_BUNDLE", ca_file),)
            taken("ca_bundle", ", ".join(name for name, path in variables if path is not None), ca_file or ca_dir)
        grid_ca_dir = variable("X509_CERT_DIR", ":") or _existing("/etc/grid-security/certificates")
        if client_cert is None:
            client_cert = taken("client_cert", "X509_USER_PROXY", variable("X509_USER_PROXY")) \
                or taken("client_cert", "/tmp/x509up_u<uid>", _own_file(f"/tmp/x509up_u{uid}", uid))
        token = token_from = None
        if bearer_token_file is None:
            token = taken("bearer_token_file", "BEARER_TOKEN", environ.get("BEARER_TOKEN") or None)
            token_from = "BEARER_TOKEN" if token else None
        if token is None and bearer_token_file is None:
            bearer_token_file = taken("bearer_token_file", "BEARER_TOKEN_FILE", variable("BEARER_TOKEN_FILE"))
            token_from = "BEARER_TOKEN_FILE" if bearer_token_file else None
        if token is None and bearer_token_file is None:
            runtime = environ.get("XDG_RUNTIME_DIR")
            bearer_token_file = (taken("bearer_token_file", "$XDG_RUNTIME_DIR/bt_u<uid>",
                                       _existing(f"{runtime}/bt_u{uid}")) if runtime else None) \
                or taken("bearer_token_file", "/tmp/bt_u<uid>", _own_file(f"/tmp/bt_u{uid}", uid))
        if netrc is None:
            # (~/.netrc is read if it is there: only the variable says that one must be.)
            netrc = taken("netrc", "NETRC", variable("NETRC"))
            variables += (("NETRC", netrc),)
            if netrc is None and (home := home_directory(environ)) is not None:
                netrc = os.path.join(home, ".netrc")
                taken("netrc", "~/.netrc", _existing(netrc))
        # (Not through __init__: its paths are made the home already, and one of an unknown user
        # there is no error.)
        found = cls.__new__(cls)
        found._assign(ca_file=ca_file, ca_dir=ca_dir, grid_ca_dir=grid_ca_dir, cert_file=client_cert,
                      key_file=client_key, bearer_token=token, bearer_token_file=bearer_token_file,
                      netrc=netrc, token_from=token_from, ca_given_with=ca_given_with,
                      variables=tuple((name, path) for name, path in variables if path is not None),
                      found_with=tuple(found_with.items()))
        return found

    def found(self) -> dict[str, tuple[str, str]]:
        """What :meth:`discover` found for the credential settings not given, as ``sc config``
        shows them: by setting, its paths (never a token: that a variable holds one is said) and
        the variable or default path that gave them (:attr:`found_with`)."""
        paths = {"ca_bundle": (self.ca_file, self.ca_dir), "client_cert": (self.cert_file,),
                 "bearer_token_file": (self.bearer_token_file,), "netrc": (self.netrc,)}
        return {setting: (", ".join(path for path in paths[setting] if path is not None)
                          or f"(none: {where} holds the token)", where)
                for setting, where in self.found_with}

    def check_variables(self, *, tls: bool = True) -> None:
        """Refuse, in one line naming the variable and its path (:class:`ConfigError`), a standard
        variable of :attr:`variables` that names nothing this user can read, or a directory where a
        file is wanted; an ``SSL_CERT_DIR`` of which no directory can be listed.  Met by the download
        instead, a missing ``NETRC`` file was taken for none (no credentials sent), a CA bundle was
        named without its variable, and an ``SSL_CERT_DIR`` without a directory ended in an untrusted
        certificate once connected.  ``NETRC=/dev/null`` stays a way to have no ``.netrc``.
        Without ``tls`` (a download that asks for no HTTPS URL), the CAs' variables are not looked
        at: as with curl, a stale one fails no plain-HTTP download, until a redirect takes it to
        HTTPS (:func:`~sharedcache.loaders.credentials.tls_context` checks them then)."""
        for name, path in self.variables:
            if not tls and name in _CA_VARIABLES:
                continue
            if name == "SSL_CERT_DIR":
                # (OpenSSL skips the directories of the list it cannot read: one usable is enough.)
                problems = [unusable_path(directory, directory=True) or
                            (None if os.path.isdir(directory) else f"cannot use {directory}: it is not a directory")
                            for directory in path.split(":") if directory]
                problem = None if not problems or None in problems else (problems[0] if len(problems) == 1 else
                                                         f"cannot use {path}: none of it is a directory to read")
            else:
                problem = unusable_path(path, directory=False)
            if problem is not None:
                raise ConfigError(f"{name}: {problem}")

    def _fields(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Credentials) and self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        shown = {name: getattr(self, name) for name in self.__slots__ if getattr(self, name) is not None}
        if "bearer_token" in shown:
            shown["bearer_token"] = "(hidden)"
        return "Credentials(" + ", ".join(f"{name}={value!r}" for name, value in shown.items()) + ")"


def _at_home(path: str | None, given_as: str | None, separator: str = "", *,
             environ: Mapping[str, str] = os.environ) -> str | None:
    """``path`` (None, or text: see :func:`_path`) with a leading ``~`` made the home
    (:func:`~sharedcache.config.files.paths_at_home`); its unknown user is a
    :class:`~sharedcache.errors.UsageError` naming ``given_as``, or left as it is if None."""
    if path is None:
        return None
    from .files import paths_at_home

    return paths_at_home(path, environ, given_as, separator=separator)  # type: ignore[return-value]  # a str in, a str out


def _path(field: str, given: object, separator: str = "") -> str | None:
    """``given``, the value of the path field ``field`` (text or an :class:`os.PathLike`; None is
    none), as text; anything else is a :class:`SettingError` naming the field (taken as it was,
    it ended each download in an internal error, and a number was taken for a file descriptor)."""
    path = os.fspath(given) if isinstance(given, (str, os.PathLike)) else given
    if path is None or isinstance(path, str):
        return path
    paths = f"paths separated by {separator!r}" if separator else "a path"
    raise SettingError(field, f"must be {paths} (text or an os.PathLike), not {type(given).__name__}")


def unusable_path(path: str, *, directory: bool) -> str | None:
    """Why the credential file ``path`` (or directory, if ``directory``) named by a setting cannot
    be used, or None: it names nothing, nothing this user may read, or a directory where a file
    is wanted.  Said where the setting is read, it names the file and line that set it; met by a
    download, it named the path alone, and a missing ``netrc`` was taken for none.  What only
    reading the file tells (a FIFO, no certificate in it) is said when a download reads it."""
    try:
        is_directory = stat.S_ISDIR(os.stat(path).st_mode)
    except OSError as e:
        return f"cannot use {path}: {e.strerror}"
    if is_directory and not directory:
        return f"cannot use {path}: it is a directory, not a file"
    if not os.access(path, os.R_OK | (os.X_OK if is_directory else 0)):
        return f"cannot use {path}: Permission denied"
    return None


def larger_than(limit: int) -> OSError:
    """The error of a file refused for holding more than ``limit`` bytes: its ``strerror`` says so."""
    unit, shift = ("MiB", 20) if limit >= 1 << 20 else ("KiB", 10)
    return OSError(errno.EFBIG, f"it is larger than {limit >> shift} {unit}")


def one_word(token: str) -> bool:
    """Whether ``token`` (spaces around it aside) is one word that an HTTP header can carry: printable
    ASCII (a header is sent as Latin-1; RFC 6750's tokens are ASCII)."""
    token = token.strip()
    return bool(token) and token.isascii() and token.isprintable() and not any(c.isspace() for c in token)


def _existing(path: str) -> str | None:
    return path if os.path.exists(path) else None


def _own_file(path: str, uid: int) -> str | None:
    """``path`` if it is a regular file of user ``uid``: in /tmp anyone may plant a credential
    under the name a user's would have."""
    try:
        status = os.lstat(path)
    except OSError:
        return None
    return path if status.st_uid == uid and (status.st_mode & 0o170000) == 0o100000 else None


class Rewrite:
    """A site rewrite rule: a source whose URL is under ``prefix`` (:meth:`rest`) is fetched from
    each of ``mirrors`` in turn, the prefix replaced by the mirror (see :func:`rewrite_rules`).
    A prefix or mirror without a path is given the path "/" (``https://github.com`` is
    ``https://github.com/``), so that what follows the prefix in a URL is joined to a mirror after
    a "/", and never goes on the mirror's host or port (``mirror.site.attacker.example``)."""

    __slots__ = ("mirrors", "prefix")

    def __init__(self, prefix: str, mirrors: Sequence[str]) -> None:
        if not _url_prefix(prefix):
            raise SettingError("rewrite", f"needs a URL prefix without spaces, not {shown_words(prefix)!r}")
        if not mirrors:
            raise SettingError("rewrite", f"{shown_words(prefix)}: give at least one mirror after '='")
        for mirror in mirrors:
            # (A password with a "/", "?" or "#" is said how to write, as a proxy's and a
            # download URL's are: the mirror was "not a URL", shown as one that seemed right.)
            problem = user_info_problem(mirror)
            if problem is not None or not _url_prefix(mirror) or not _parses(mirror):
                raise SettingError("rewrite", f"{shown_words(prefix)}: the mirror {shown_words(mirror)!r} is not a URL "
                                              f"({problem or 'SCHEME://HOST...'})")
            # A mirror stands for an http: source's URL, and the source fetches no other scheme:
            # let through, every miss the rule matches failed as a malformed recipe.
            if mirror.partition("://")[0].lower() not in ("http", "https"):
                raise SettingError("rewrite", f"{shown_words(prefix)}: the mirror {shown_words(mirror)!r} is not an "
                                              "http:// or https:// URL")
        self.prefix, self.mirrors = with_path(prefix), tuple(map(with_path, mirrors))

    def rest(self, url: str) -> str | None:
        """What follows this rule's prefix in ``url`` (without user info), the text that goes after
        a mirror; None if ``url`` is not under the prefix.  A prefix matches whole path segments, as
        directories do: where it ends, ``url`` ends or goes on with a "/", "?" or "#", unless the
        prefix ends with one itself.  ``https://host/pub`` matches ``https://host/pub``,
        ``https://host/pub/a`` and ``https://host/pub?a``, not ``https://host/public``; and as a
        prefix without a path has the path "/", ``https://github.com`` matches neither
        ``https://github.com.example``, ``https://github.company.com`` nor ``https://github.com:8443``.
        The scheme and host compare in any case of ASCII letters (``HTTPS://GitHub.com/x`` is under
        ``https://github.com/``), the path as it is."""
        url = with_path(url)
        if not with_folded_origin(url).startswith(with_folded_origin(self.prefix)):
            return None
        rest = url[len(self.prefix):]
        return rest if self.prefix.endswith(_SEGMENT_ENDS) or rest[:1] in ("", *_SEGMENT_ENDS) else None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Rewrite) and (self.prefix, self.mirrors) == (other.prefix, other.mirrors)

    def __hash__(self) -> int:
        return hash((self.prefix, self.mirrors))

    def __repr__(self) -> str:  # (a program may log it: no password of a mirror in it)
        return f"Rewrite({without_user_info(self.prefix)!r}, {tuple(map(without_user_info, self.mirrors))!r})"


#: What ends a segment of a URL's path, where a rule's prefix may end (see :meth:`Rewrite.rest`).
_SEGMENT_ENDS = ("/", "?", "#")


def _url_prefix(text: str) -> bool:
    """Whether ``text`` begins a URL with its scheme and host (``https://host/...``), without spaces."""
    scheme, separator, rest = text.partition("://")
    return (bool(separator) and scheme[:1].isalpha() and all(char.isalnum() or char in "+.-" for char in scheme)
            and rest[:1] not in ("", "/") and not any(char.isspace() for char in text))


def rewrite_rules(text: str) -> tuple[Rewrite, ...]:
    """Rewrite rules from their text: ``PREFIX = MIRROR [MIRROR...]``, one rule per line or
    separated by ``;``; a ``#`` starts a comment line.  The first rule whose prefix a source's URL
    is under (:meth:`Rewrite.rest`) applies; a mirror equal to the prefix keeps the URL as written
    (the origin as the last resort)::

        https://github.com/ = http://mirror.site/github/ https://github.com/
    """
    rules = []
    for text_line in _rule_texts(text)[::2]:
        line = text_line.strip()
        if not line or line.startswith("#"):
            continue
        prefix, equals, mirrors = line.partition("=")
        if not equals:
            raise SettingError("rewrite", f"{shown_words(line)!r}: expected PREFIX = MIRROR [MIRROR...]")
        if _splits_user_info(line.split()):
            raise SettingError("rewrite", f"{shown_words(prefix.strip())}: a user name or password with a space in a "
                                          "URL of the rule (write the space %20)")
        rules.append(Rewrite(prefix.strip(), mirrors.split()))
    return tuple(rules)


def _rule_texts(text: str) -> list[str]:
    """The rules of ``text`` and the separators between them, alternately (rule, separator,
    rule...): rules end at a line's end, and at a ";", but one within a URL's authority that no
    rule follows.  A mirror's password may hold a ";" (RFC 3986 allows it in user info as it
    is), whose end would otherwise be read, and shown, as a rule of its own."""
    import re

    parts = re.split(r"([;\n])", text)
    joined = [parts[0]]
    for separator, rule in zip(parts[1::2], parts[2::2], strict=True):
        words, begins = joined[-1].split(), rule.strip()
        within_authority = bool(words) and "/" not in words[-1].partition("://")[2] and "://" in words[-1]
        if separator == ";" and within_authority and begins and not begins.startswith("#") \
                and not _url_prefix(begins.partition("=")[0].strip()):
            joined[-1] += separator + rule
        else:
            joined += [separator, rule]
    return joined


def shown_rewrites(text: str) -> str:
    """Rewrite rules as written, without the user info of their URLs: what ``sc config`` shows.
    Only the first "=" of a rule ends its prefix, as :func:`rewrite_rules` reads it: a mirror's
    password may hold more (a base64 token's padding)."""
    shown = []
    for rule in _rule_texts(text):
        prefix, equals, mirrors = rule.partition("=")
        shown.append(shown_words(prefix) + equals + shown_words(mirrors))
    return "".join(shown)


def why_no_setting(line: str, key: str | None, keys: Collection[str]) -> str:
    """Why ``line`` of a config file sets nothing: it has no "=" (``key`` None), or its ``key``
    is none of ``keys``.  The line goes to the log of every job, so it is never quoted as
    written: one that begins with a key lacks the "=" after it (``proxy: http://alice:S3CRET@squid:3128``),
    said without the rest; any other is shown as :func:`shown_words` shows the words of a proxy
    chain or of rules, which it may continue."""
    begins_with = line[:len(line) - len(line.lstrip("abcdefghijklmnopqrstuvwxyz_"))]
    if begins_with in keys:
        return f"expected 'key = value', but no '=' follows {begins_with!r}"
    if key is None:
        return f"expected 'key = value', not {quoted(shown_words(line, proxies=True))}"
    return f"unknown key {quoted(shown_words(key, proxies=True))} (known: {', '.join(keys)})"


def shown_words(text: str, *, proxies: bool = False) -> str:
    """``text``, rules or a part of one, with each of its words shown as a message shows a URL
    (:func:`~sharedcache.errors.unparsed_url`): without user info, which holds passwords, nor
    what a space cut off a user info (:func:`_user_info_tail`).  ``proxies``: ``text`` may hold
    proxies too (a config file's line that sets nothing), so a word with an "@" is shown as a
    proxy is (:func:`~sharedcache.errors.shown_proxy`): a proxy may be written without its
    scheme, and has no path, so an "@" after its host ends a password with a "/" in it."""
    import re

    parts = re.split(r"(\s+)", text)
    shown = [shown_proxy(part) if proxies and "@" in part else unparsed_url(part) for part in parts]
    url = None  # the index of the last URL met
    for index, part in enumerate(parts):
        if "://" in part:
            url = index
        elif _user_info_tail(part):
            # The URL before it and the words between hold the rest of that user info.
            first = index if url is None else url
            if url is not None:
                shown[url] = parts[url].partition("://")[0] + "://..."
                first += 1
            shown[first:index + 1] = [piece if piece.isspace() else "..." for piece in parts[first:index + 1]]
    return "".join(shown)


def _user_info_tail(word: str) -> bool:
    """Whether ``word`` of a rule may be the end of a user name or password that a space split
    from its URL (``http://user:pa ss@mirror/``): it is no URL and holds an "@".  What is before
    its "@" is part of a password, never to be shown."""
    return "@" in word and "://" not in word


def _splits_user_info(words: Sequence[str]) -> bool:
    """Whether a space of a rule's ``words`` splits a URL's user name or password: a word that
    may end one (:func:`_user_info_tail`) comes after a URL whose authority is left open (no "/"
    after its "://"), with no "=" between.  ``mirror@host/x``, a mirror written without its
    scheme, is no URL's tail, and is refused as the mirror that is no URL it is."""
    open_authority = False
    for word in words:
        if "://" in word:
            open_authority = "/" not in word.partition("://")[2]
        elif open_authority and _user_info_tail(word):
            return True
        elif word == "=" or "/" in word:
            open_authority = False
    return False


def seconds(setting: str, value: object) -> float:
    """``value`` of ``setting`` as seconds: a number, not negative and at most
    :data:`MAX_SECONDS` (NaN is neither); else :class:`SettingError`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
        raise SettingError(setting, f"must be a number of seconds, not {value!r}")
    if value > MAX_SECONDS:
        raise SettingError(setting, f"must be at most {MAX_SECONDS:.0f} seconds, not {value!r}")
    return float(value) or 0.0  # -0 (which 0 <= takes) is 0, and must be shown so: not "-0 s"


class FetchPolicy:
    """How sources fetch: connections at once, timeouts, retries and back-off.

    ``connections``: how many connections one download may use at once (HTTP ranges), 1 to
    :data:`MAX_CONNECTIONS`.  ``connect_timeout``, ``read_timeout``: seconds to wait for a
    connection, and for the next bytes of an answer.  ``retries``: how many times a failed
    transfer (connection error, 5xx, interrupted body) is tried again, and how many times a
    population starts over when a source cannot resume.  Retry ``attempt`` (from 0) waits
    ``backoff`` seconds doubled ``attempt`` times, at most ``backoff_max``.  ``speed_limit``,
    ``speed_time``: a transfer (each connection of one) that brings fewer than ``speed_limit``
    bytes a second, on average over ``speed_time`` seconds, fails (curl's ``--speed-limit`` and
    ``--speed-time``); a ``speed_limit`` of 0 never does.  Without it, an origin that sends a
    byte now and then, each within the read timeout, would keep a population going forever.  The
    seconds are those the process runs: stopped (SIGSTOP: a suspended job), it receives nothing
    through no fault of the origin.  ``credentials``: TLS
    trust and authentication (:class:`Credentials`; None is ``Credentials()``: no credentials, and
    OpenSSL's default CAs, not those that ``SSL_CERT_FILE`` or ``SSL_CERT_DIR`` name, which
    :meth:`Credentials.discover` reads).
    ``rewrites``: the site's rewrite rules (:func:`rewrite_rules`).

    ``proxy``: the proxy chain (a string as :func:`proxy_chain` reads it, or its groups, checked
    alike), or None to follow curl's environment variables.  ``no_proxy``: hosts reached directly, as curl's
    ``no_proxy`` (None: the environment's).  ``offline``: no network connection of any kind; a
    source that needs one fails at once.
    """

    __slots__ = (
        "backoff",
        "backoff_max",
        "connect_timeout",
        "connections",
        "credentials",
        "no_proxy",
        "offline",
        "proxy",
        "read_timeout",
        "retries",
        "rewrites",
        "speed_limit",
        "speed_time",
    )
    connections: int
    connect_timeout: float
    read_timeout: float
    retries: int
    backoff: float
    backoff_max: float
    speed_limit: int
    speed_time: float
    credentials: Credentials | None
    rewrites: tuple[Rewrite, ...]
    proxy: ProxyChain | None
    no_proxy: str | None
    offline: bool

    def __init__(self, *, connections: int = 1, connect_timeout: float = 30.0,
                 read_timeout: float = 60.0, retries: int = 5, backoff: float = 0.25,
                 backoff_max: float = 8.0, speed_limit: int = 1000, speed_time: float = 60.0,
                 credentials: Credentials | None = None, rewrites: Sequence[Rewrite] = (),
                 proxy: str | Sequence[Sequence[str]] | None = None, no_proxy: str | None = None,
                 offline: bool = False) -> None:
        if type(connections) is not int or not 1 <= connections <= MAX_CONNECTIONS:
            raise SettingError("connections", f"must be between 1 and {MAX_CONNECTIONS}, not {connections!r}")
        if type(retries) is not int or retries < 0:
            raise SettingError("retries", f"must be a whole number of at least 0, not {retries!r}")
        if type(speed_limit) is not int or speed_limit < 0:
            raise SettingError("speed_limit", f"must be a whole number of bytes a second, not {speed_limit!r}")
        durations = {what: seconds(what, given) for what, given in (
            ("connect_timeout", connect_timeout), ("read_timeout", read_timeout), ("backoff", backoff),
            ("backoff_max", backoff_max), ("speed_time", speed_time))}
        for what, given in (("connect_timeout", connect_timeout), ("read_timeout", read_timeout)):
            if not given:  # urllib3 refuses a timeout of 0 (a socket would not wait at all)
                raise SettingError(what, f"must be a number of seconds more than 0, not {given!r}")
        if speed_time == 0 and speed_limit:
            raise SettingError("speed_time", "must be more than 0 seconds when there is a speed limit")
        if credentials is not None and not isinstance(credentials, Credentials):
            raise SettingError("credentials", f"must be a Credentials or None, not {type(credentials).__name__}")
        # (Made a tuple once: an iterator that the check walked would be empty after it.)
        rules = tuple(rewrites) if hasattr(rewrites, "__iter__") else (rewrites,)
        if not all(isinstance(rule, Rewrite) for rule in rules):
            # (a str of rules is read by rewrite_rules(); taken here, it was a tuple of characters)
            raise SettingError("rewrites", "must be Rewrite rules, as rewrite_rules(text) makes them")
        if no_proxy is not None and not isinstance(no_proxy, str):  # (it was met only by a download)
            raise SettingError("no_proxy", f"must be text, hosts separated by commas, not {type(no_proxy).__name__}")
        if type(offline) is not bool:
            raise SettingError("offline", f"must be true or false, not {offline!r}")
        values = {"connections": connections, **durations, "retries": retries, "speed_limit": speed_limit,
                  "credentials": credentials, "rewrites": rules,
                  "proxy": None if proxy is None else proxy_chain(proxy), "no_proxy": no_proxy,
                  "offline": offline}
        for name, value in values.items():
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: object) -> None:
        # A value, shared by whoever was given it: changing it would change their fetching too.
        raise AttributeError(f"FetchPolicy is immutable: make a new one to change {name}")

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry ``attempt`` (0 for the first)."""
        # Past 2**1023 a float overflows: a policy of thousands of retries met it after hours.
        return min(self.backoff * 2.0 ** min(attempt, 64), self.backoff_max)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FetchPolicy) and self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def _fields(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __repr__(self) -> str:
        # (A program may log it: its proxies are shown as messages show them, without passwords.)
        shown = {name: getattr(self, name) for name in self.__slots__}
        if self.proxy is not None:
            shown["proxy"] = tuple(tuple(shown_proxy(member) for member in group) for group in self.proxy)
        return "FetchPolicy(" + ", ".join(f"{name}={value!r}" for name, value in shown.items()) + ")"


def proxy_chain(chain: str | Sequence[Sequence[str]]) -> ProxyChain:
    """The groups of a CVMFS-style proxy chain ``A|B;C``: groups (``;``) are tried in order, the
    proxies of a group (``|``) in random order; ``DIRECT`` is a member that uses no proxy.  A
    proxy is ``[SCHEME://][USER:PASSWORD@]HOST[:PORT]``, SCHEME being ``http`` (if none is given),
    ``https`` or one of :data:`SOCKS_SCHEMES`.
    ``chain`` is that text, or its groups (each a sequence of members), checked alike.
    """
    if isinstance(chain, str):
        chain = [[member.strip() for member in group.split("|")] for group in chain.split(";")]
    elif not isinstance(chain, (list, tuple)) or not all(isinstance(group, (list, tuple)) for group in chain):
        # (Not shown: it may hold a password.)
        raise SettingError("proxy", "must be text, or its groups as a list of lists of members")
    # An empty group or chain is no route at all: refused as the empty member it is written as.
    return tuple(tuple(proxy_url(member) for member in group or [""]) for group in chain or [[""]])


def proxy_url(member: str) -> str:
    """The URL of the proxy written ``member`` (``http://`` added if no scheme is given; whatever
    follows its port left out, as curl ignores it), or ``DIRECT``; :class:`SettingError` if it is
    neither."""
    if not isinstance(member, str):
        raise SettingError("proxy", f"has a member that is not text but {type(member).__name__}")
    if member.upper() == DIRECT:
        return DIRECT
    scheme, has_scheme, rest = member.partition("://")
    scheme = scheme.lower() if has_scheme else "http"  # (HTTP://, as curl takes it)
    if not has_scheme:
        rest = member
    user_info = split_user_info(rest, schemeless=True)[1]
    address = host_and_port(rest, schemeless=True)
    url = f"{scheme}://{address}" if user_info is None else f"{scheme}://{user_info}@{address}"
    host, colon, port = address.rpartition(":")
    if not colon or host.endswith(":"):  # no port, or an IPv6 address without brackets
        host, port = address, ""
    # (A "#" in a password that starts with digits reads as a port to curl, which then connects
    # to the user name: refused like the "/" and "?" that download URLs may not hold either.)
    problem = pathless_problem(member, schemeless=True) or user_info_problem(member, schemeless=True) or (
        f"{scheme} needs the PySocks package: pip install 'sharedcache[socks]'"
        if scheme in SOCKS_SCHEMES and not _socks_installed() else None)
    if scheme not in ("http", "https", *SOCKS_SCHEMES) or not host or (port and not port.isdigit()) \
            or not member.isprintable() or not member.isascii() or " " in member \
            or not _parses(url) or problem is not None:
        why = f"cannot use {shown_proxy(member)!r}" if member else "has an empty member"
        if problem is not None:
            why += f" ({problem})"
        raise SettingError("proxy", f"{why}: expected DIRECT or [SCHEME://]HOST[:PORT] (SCHEME: http, https, "
                                    f"{', '.join(SOCKS_SCHEMES)}), groups separated by ';' and proxies inside a "
                                    "group by '|'")
    return url


def _socks_installed() -> bool:
    """Whether urllib3's SOCKS connections can be made: they need PySocks (the ``socks`` extra)."""
    from importlib.util import find_spec

    return find_spec("socks") is not None


def _parses(url: str) -> bool:
    """Whether ``url`` has a host and a port that can be connected to, and urllib3 (which is
    given it without its user info) connects to the host and port that Python's parser reads
    and messages show: to urllib3 a "\\" ends the host ("proxy\\x:3128" is "proxy", port 80), and
    a host such as "[::1]x" or one with a "%00" was a traceback once connected to."""
    from urllib.parse import unquote, urlsplit

    from urllib3.util import parse_url

    try:
        parts, connected = urlsplit(url), parse_url(without_user_info(url))
        port = parts.port  # raises past 65535
    except ValueError:  # an unclosed "[" of an IPv6 address, say (urllib3's errors are ValueErrors too)
        return False
    return bool(parts.hostname) and port != 0 and connected.port == port \
        and unquote(connected.host or "").strip("[]").lower() == unquote(parts.hostname or "").lower()
