"""TLS trust and authentication of HTTP downloads: what the connection pool and each request need.

The settings say where credentials come from (:class:`~sharedcache.config.settings.Credentials`,
filled at the edge from the settings and the standard variables); this module reads them when a
download needs them and turns them into:

* :func:`tls_context`: the TLS context of the connections, made when the first one is, which
  trusts the CAs asked for and presents the client certificate (a PEM certificate and key, or a
  grid proxy that holds both);
* :class:`Authorization`: the ``Authorization`` header of each request, and what was sent, for
  messages.  In order: the user info of the URL (``https://user:password@host/``, sent as basic
  auth, never shown), a ``.netrc`` entry for the host (basic auth), a bearer token (over HTTPS
  only: a token is not sent in clear text).  It goes to the URL's own origin alone: a redirect to
  another scheme, host or port is followed without it.  The client certificate is presented to
  the targets of redirects too, as curl and davix present it (grid storage redirects to the disk
  server that holds the file, which asks for it), but not to an HTTPS proxy, which is verified
  against the same CAs.

No credential is ever part of a message: messages name where a credential came from (a file, a
variable), never its value.  A credential file that cannot be used is a :class:`CredentialError`
(not a download error: no mirror would do better; nor the recipe's failure: it is this process's).
"""

from __future__ import annotations

import os
import re
import ssl
import stat
from typing import TYPE_CHECKING, Any

from ..config.files import open_trusted
from ..config.settings import Credentials, larger_than, one_word
from ..errors import CredentialError, ascii_lower, split_user_info
from ..lean import scoped

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

# One context per set of credentials (with or without the client certificate) in a process:
# loading a CA bundle takes tens of milliseconds.
_contexts: dict[tuple[Credentials, bool], ssl.SSLContext] = {}


def tls_context(credentials: Credentials | None, url: str, *,
                client_certificate: bool = True) -> Callable[[], ssl.SSLContext]:
    """What makes the TLS context of the connections that fetch ``url`` with ``credentials``,
    called when the first TLS connection is made: a plain-HTTP download then loads no CA bundle.
    Without credentials (a fetch policy's None) it is that of ``Credentials()``: OpenSSL's
    default CAs by their paths.  urllib3's own default context, left to it, loaded what
    ``SSL_CERT_FILE`` and ``SSL_CERT_DIR`` name, which only :meth:`Credentials.discover` reads:
    a program that gave no credentials trusted a CA a variable named, and a stale one kept the
    system's bundle out, unsaid.

    The context presents the client certificate, unless ``client_certificate`` is false: the
    context of the connections to an HTTPS proxy, which trusts the same CAs but is given no
    credential.

    For an ``https://`` URL the context with the client certificate is made here, so that a CA
    bundle or client certificate that cannot be used fails the download before it connects.  A
    plain-HTTP download does not fail because of one until it reaches HTTPS (redirected there, or
    through an HTTPS proxy): then the CAs' variables are checked as an HTTPS URL's are up front
    (:meth:`~sharedcache.config.settings.Credentials.check_variables`: one line naming the
    variable), and CAs that cannot be used fail it, as they fail an HTTPS URL: the system's CAs,
    trusted there instead, ignored what the user asked for.  A client certificate that cannot be
    used (a stale ``X509_USER_PROXY``) is left out there instead: it fails no plain-HTTP URL."""

    given = Credentials() if credentials is None else credentials

    def context() -> ssl.SSLContext:
        if not url.startswith("http://"):
            return _made_context(given, client_certificate)
        if (given, client_certificate) not in _contexts:
            given.check_variables()
        try:
            return _made_context(given, client_certificate)
        except CredentialError:
            if not client_certificate:
                raise
            return _made_context(given, False)  # (raises again if the CAs are at fault)

    if client_certificate and not url.startswith("http://"):
        context()
    return context


def _made_context(credentials: Credentials, client_certificate: bool) -> ssl.SSLContext:
    """The process's TLS context for ``credentials``, made on first need (:func:`_ssl_context`)."""
    made = _contexts.get((credentials, client_certificate))
    if made is None:
        made = _contexts[credentials, client_certificate] = _ssl_context(credentials, client_certificate)
    return made


def _ssl_context(credentials: Credentials, client_certificate: bool = True) -> ssl.SSLContext:
    if credentials.ca_file or credentials.ca_dir:
        # The CAs asked for, instead of the system's (a client context verifies certificates and
        # host names, as the default one does).
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        if credentials.ca_file:
            with _checked_file("CA bundle", credentials.ca_file) as bundle:
                _load(context.load_verify_locations, "CA bundle", credentials.ca_file, cafile=bundle)
        if credentials.ca_dir:
            _trust_directories(context, "CA bundle", credentials.ca_dir)
    else:
        # OpenSSL's own default CAs, by their paths: create_default_context() alone loads the files
        # that SSL_CERT_FILE and SSL_CERT_DIR name where they are set, which the settings read
        # already (Credentials.discover) or pass over ("ca_bundle ="): a stale one failed every
        # download, and a CA it named was trusted.  (A capath, even one that is not there, keeps
        # the variables out; a missing default bundle is skipped, as OpenSSL skips it.)
        system = ssl.get_default_verify_paths()
        context = ssl.create_default_context(
            cafile=system.openssl_cafile if os.path.isfile(system.openssl_cafile) else None,
            capath=system.openssl_capath)
    if credentials.grid_ca_dir:
        _trust_directories(context, "grid CA", credentials.grid_ca_dir)
    if credentials.cert_file and client_certificate:
        cert_file, key_file = credentials.cert_file, credentials.key_file

        def no_passphrase() -> bytes:
            # Without this, OpenSSL asks for the passphrase on the terminal (a job waits there for
            # good, holding its population) or prints its prompt and fails with "Invalid argument".
            raise CredentialError(f"cannot use the client certificate {cert_file}: its key {key_file or cert_file} is "
                              "encrypted, and sc cannot ask for its passphrase")

        with _checked_file("client certificate", cert_file) as certificate, \
                _checked_file("client key", key_file) as key:
            _load(context.load_cert_chain, "client certificate", cert_file,
                  certfile=certificate, keyfile=key, password=no_passphrase)
    return context


#: The largest file of certificates or keys used: far more than any bundle holds (the system's,
#: some 150 CAs, is about 200 KB), and a bound on what a file named by mistake costs.
_CERTIFICATES_MAX_BYTES = 16 << 20

#: The name of a CA's file in a hashed directory (``openssl rehash``): the hash of its subject and a
#: number.  Its CRLs (``HHHHHHHH.rN``) are not read: no CRL is checked.
_HASHED_CA = re.compile(r"[0-9a-f]{8}\.[0-9]+")


@scoped
def _checked_file(what: str, path: str | None) -> Iterator[str | None]:
    """The name through which OpenSSL reads the credential file ``path`` (None for None), for the
    ``with`` block; a :class:`CredentialError` naming it if it is no regular file or cannot be used.

    OpenSSL opens the paths it is given itself, blocking: a FIFO there (``X509_USER_PROXY``
    naming a pipe by mistake) would hold the download, and its population, past every timeout.
    The file is opened here instead, without waiting, and checked (:func:`_open_regular`), and
    OpenSSL given ``/proc/self/fd/N``, which opens that very file whatever ``path`` names by then.
    Nothing is copied (a private key copied to a temporary file would outlive a killed process),
    and OpenSSL reads the file as it read its path: ``cadata`` would take neither a bundle's CRLs
    and trusted certificates nor its comments outside ASCII."""
    if path is None:
        yield None
        return
    try:
        fd = _open_regular(path, _CERTIFICATES_MAX_BYTES)
    except OSError as exc:
        raise CredentialError(f"cannot use the {what} {path}: {exc.strerror}") from None
    if fd is None:
        raise CredentialError(f"cannot use the {what} {path}: it is not a regular file")
    try:
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


def _trust_directories(context: ssl.SSLContext, what: str, directories: str) -> None:
    """Have ``context`` trust the CAs of the hashed ``directories`` (separated by ``:``, as OpenSSL
    reads them), all read now, each through :func:`_checked_file`: OpenSSL would open a CA's file
    itself when a handshake needs it, blocking (see there).  Reading them all takes about as long
    as reading a bundle of the same CAs, once per process.  What OpenSSL would find no CA in is
    skipped, as OpenSSL skips it: a directory that cannot be listed, a link left dangling, a file
    the user may not read, a directory, a file that holds no certificate.  One of them failed
    every HTTPS download, where OpenSSL fails only the one whose CA it would have held."""
    for directory in directories.split(":"):
        try:
            names = os.listdir(directory) if directory else []
        except OSError:
            continue
        for name in names:
            path = os.path.join(directory, name)
            # (Checked by path, then opened: what changes between is refused in one line, or skipped.)
            if not _HASHED_CA.fullmatch(name) or not os.access(path, os.R_OK) or os.path.isdir(path):
                continue
            try:
                with _checked_file(what, path) as ca:
                    context.load_verify_locations(cafile=ca)
            except ssl.SSLError:
                continue


def _load(method: Any, what: str, path: str, **kwargs: Any) -> None:
    try:
        method(**kwargs)
    except (OSError, ssl.SSLError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else getattr(exc, "reason", None) or exc
        raise CredentialError(f"cannot use the {what} {path}: {why}") from None


#: OpenSSL's verification failures that the CA of the certificate, given, would end: its issuer
#: unknown here (X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT, DEPTH_ZERO_SELF_SIGNED_CERT,
#: SELF_SIGNED_CERT_IN_CHAIN, UNABLE_TO_GET_ISSUER_CERT_LOCALLY, UNABLE_TO_VERIFY_LEAF_SIGNATURE).
_ISSUER_UNKNOWN = frozenset({2, 18, 19, 20, 21})


def certificate_problem(exc: BaseException, credentials: Credentials | None) -> str | None:
    """A one-line cause for a TLS failure (an untrusted certificate, a refused client
    certificate), or None if ``exc`` is no such failure.  An untrusted certificate's line says
    where to give its CA: to what gives ``credentials`` their CAs (``ca_given_with``: the
    ``ca_bundle`` setting and where it was set, which ``SSL_CERT_FILE`` would not override), or,
    for a program's own credentials or none, to its fetch policy."""
    while not isinstance(exc, ssl.SSLError):
        # urllib3 nests its errors: a MaxRetryError's reason, a ProxyError's second argument
        # (the TLS handshake with an HTTPS proxy), an SSLError's first.
        nested = [arg for arg in exc.args if isinstance(arg, BaseException)]
        inner = getattr(exc, "reason", None) or exc.__cause__ or exc.__context__ or (nested[-1] if nested else None)
        if not isinstance(inner, BaseException) or inner is exc:
            return None
        exc = inner
    if isinstance(exc, ssl.SSLCertVerificationError):
        if exc.verify_code not in _ISSUER_UNKNOWN:  # expired, for another host...: no CA makes it do
            return f"the server's certificate is refused ({exc.verify_message})"
        given_with = credentials.ca_given_with if credentials is not None else None
        return (f"untrusted server certificate ({exc.verify_message}): give its CA with "
                f"{given_with or 'FetchPolicy(credentials=Credentials(ca_file=...))'}")
    if exc.reason == "WRONG_VERSION_NUMBER":  # OpenSSL reading a plain answer as a TLS record
        return "TLS failed (WRONG_VERSION_NUMBER): the other end answered without TLS (a plain http:// server?)"
    return f"TLS failed ({exc.reason or exc})"


class Authorization:
    """The ``Authorization`` header for the requests of one URL, and what was sent, in words
    (``sent``: for the message of a 401 or 403 answer).

    ``login`` is the (user, password) of the URL's user info, if it has one."""

    def __init__(self, credentials: Credentials | None, url: str, login: tuple[str, str] | None) -> None:
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        self.headers: dict[str, str] = {}
        sent = []
        if login is not None:
            self._basic(*login)
            sent.append("the user and password of the URL")
        elif credentials is None:
            pass
        elif (found := _netrc_login(credentials.netrc, parts.hostname or "")) is not None:
            self._basic(*found)
            sent.append(f"the {credentials.netrc} login for {parts.hostname}")
        elif parts.scheme == "https" and (token := _bearer_token(credentials)) is not None:
            self.headers["Authorization"] = f"Bearer {token}"
            sent.append(f"the bearer token from {credentials.token_from}")
        if credentials is not None and credentials.cert_file and parts.scheme == "https":
            sent.append(f"the client certificate {credentials.cert_file}")
        self.sent = "sent " + " and ".join(sent) if sent else "no credentials were sent"

    def _basic(self, user: str, password: str) -> None:
        self.headers["Authorization"] = basic_auth(user, password)


def basic_auth(user: str, password: str) -> str:
    """The value of an ``Authorization`` (or ``Proxy-Authorization``) header for HTTP basic
    auth, in UTF-8 (as RFC 7617 allows: urllib3's ``make_headers`` takes Latin-1 only)."""
    import base64

    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def url_login(url: str) -> tuple[str, tuple[str, str] | None]:
    """``url`` without its user info, and the (user, password) that user info gives, if any
    (:func:`~sharedcache.errors.split_user_info` finds it, as for every message)."""
    from urllib.parse import unquote

    shown, user_info = split_user_info(url)
    if user_info is None:
        return url, None
    user, _, password = user_info.partition(":")
    return shown, (unquote(user), unquote(password))


# A word of a .netrc, after what separates it from the one before: spaces, tabs, line ends and
# comment lines (whose first word starts with "#"), skipped whole ("*+": no word is read back out
# of a comment).  A word is quoted (group 1; group 2, its closing quote, is missing if the file
# ends first) or plain (group 3): anything but spaces, tabs and line ends.
_NETRC_WORD = re.compile(r'(?:^[ \t]*#[^\n]*|[ \t\r\n])*+(?:"((?:[^"\\]|\\.)*)(")?|([^ \t\r\n]+))',
                         re.MULTILINE | re.DOTALL)
_NETRC_ESCAPES = {"n": "\n", "r": "\r", "t": "\t"}
_NETRC_MACRO_END = re.compile(r"\n\r*\n")  # an empty line
# The largest .netrc read, as curl since 8.12 (which refuses a larger one; 7.88 reads any
# size): thousands of entries, and a bound on the memory a runaway file takes at each download.
_NETRC_MAX_BYTES = 128 * 1024


def _netrc_login(path: str | None, host: str) -> tuple[str, str] | None:
    """The login and password ``.netrc`` gives for ``host`` (or its ``default``), if any.

    Users share one ``.netrc`` between curl, wget, git and sc, and other tools write words of
    their own in it (``port 80``): Python's ``netrc`` refuses the whole file for one of them, so
    the file is read as curl reads it (lib/netrc.c), but for a byte order mark at its start,
    skipped.  Words are separated by spaces, tabs and line ends, and a line whose first word
    starts with ``#`` is a comment.  The keywords, in any case: ``machine NAME``, ``default``,
    ``login X`` (or ``user X``, which Python's ``netrc`` read as ``login``: a file written for it
    keeps working), ``password X``, ``account X`` (not used), and ``macdef``, whose macro, up to
    the next empty line, is skipped.  The value of a keyword is the next word, whatever it is.
    A word that begins with a double quote runs to the next one (it may hold spaces), and a
    backslash in it escapes the next character (``\\n``, ``\\r`` and ``\\t`` are a newline, a
    carriage return and a tab); a quoted word is never a keyword.
    Any other word is skipped by itself (in ``port 80``, both are).

    The first ``machine`` entry for ``host`` that gives a login or a password wins; a
    ``default`` one, only if none does (curl takes a ``default`` written before it).  Keywords and
    machine names are compared in any case of ASCII letters only, as curl compares them: by
    Unicode's rules a name written with a Kelvin sign (U+212A) would get the login of the same
    name written with a ``k``.

    A file that cannot be read is one line that names the file and the line at fault, never a
    word (a password can be anywhere): one with a quote left open, or with a NUL byte (curl takes
    it for the end of the line and drops text after it, 7.88 the next line too: no word is cut
    there and sent).  A file larger than 128 KiB is refused without reading further, as curl
    refuses it since 8.12."""
    if not path or (text := _netrc_text(path)) is None:
        return None
    host = ascii_lower(host)
    # The machine entries before the default ones, each in file order (sorted is stable).
    for machine, given in sorted(_netrc_entries(text, path), key=lambda entry: entry[0] is None):
        if given.keys() & {"login", "password"} and (machine is None or ascii_lower(machine) == host):
            return given.get("login", ""), given.get("password", "")
    return None


def _netrc_text(path: str) -> str | None:
    """The text of the ``.netrc`` at ``path``, or None if there is none (or it is no regular
    file: ``NETRC=/dev/null`` is one way to have none)."""
    try:
        data = _regular_file_bytes(path, _NETRC_MAX_BYTES)
    except OSError as exc:
        # Absent, as is one that cannot even be looked up (HOME a directory of another user's,
        # as after sudo without -H); but a file that is there and cannot be read is an error.
        if not os.path.isfile(path):
            return None
        raise CredentialError(f"cannot read {path}: {exc.strerror}") from None
    if data is None:
        return None
    if (nul := data.find(b"\0")) >= 0:
        line = data.count(b"\n", 0, nul) + 1
        raise CredentialError(f"cannot read {path}: it holds a NUL byte (line {line})")
    try:
        # (Without the byte order mark some Windows editors start a file with, which would join
        # the first keyword and lose the first entry to a later default one.)
        return data.decode().removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        raise CredentialError(f"cannot read {path}: it is not UTF-8 text (byte {exc.start})") from None


def _open_regular(path: str, limit: int) -> int | None:
    """A descriptor of the credential file at ``path``, or None if it is no regular file.  It is
    opened without waiting, and checked before anything reads it: opening a FIFO waits for a
    writer, for good, and a device may never end.  OSError if it cannot be opened, or if it holds
    more than ``limit`` bytes (its ``strerror`` says so: a runaway file would cost its size in
    memory at each download)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)
    try:
        status = os.fstat(fd)
        if stat.S_ISREG(status.st_mode) and status.st_size <= limit:
            return fd
    except BaseException:
        os.close(fd)
        raise
    os.close(fd)
    if stat.S_ISREG(status.st_mode):
        raise larger_than(limit)
    return None


def _regular_file_bytes(path: str, limit: int) -> bytes | None:
    """What the credential file at ``path`` holds, opened and checked by :func:`_open_regular`
    (None if it is no regular file)."""
    fd = _open_regular(path, limit)
    if fd is None:
        return None
    with open(fd, "rb") as file:
        data = file.read(limit + 1)  # (it may have grown since it was checked)
    if len(data) > limit:
        raise larger_than(limit)
    return data


def _netrc_entries(text: str, path: str) -> list[tuple[str | None, dict[str, str]]]:
    """The entries of the ``.netrc`` at ``path`` in file order: each machine (None for
    ``default``) and the keywords it gives (``login``, ``password``, ``account``), read as
    :func:`_netrc_login` says."""
    entries: list[tuple[str | None, dict[str, str]]] = []
    given: dict[str, str] = {}  # by the entry being read (before the first one, or after a macro: by none)
    position = 0

    def next_word() -> tuple[str, bool] | None:
        """The next word, unquoted, and whether it was quoted; None at the end of the file."""
        nonlocal position
        word = _NETRC_WORD.match(text, position)
        if word is None:
            return None
        position = word.end()
        if word[3] is not None:
            return word[3], False
        if word[2] is None:
            line = text.count("\n", 0, word.start(1)) + 1
            raise CredentialError(f"cannot read {path}: a quote is not closed (line {line})")
        return re.sub(r"\\(.)", lambda escaped: _NETRC_ESCAPES.get(escaped[1], escaped[1]), word[1],
                      flags=re.DOTALL), True

    def value() -> str | None:
        """The value of a keyword: the next word, whatever it is."""
        word = next_word()
        return word[0] if word else None

    while (word := next_word()) is not None:
        keyword = None if word[1] else ascii_lower(word[0])
        if keyword in ("machine", "default"):
            given = {}
            entries.append(((value() or "") if keyword == "machine" else None, given))
        elif keyword in ("login", "user", "password", "account"):
            if (found := value()) is not None:
                given["login" if keyword == "user" else keyword] = found
        elif keyword == "macdef":
            given = {}
            macro_end = _NETRC_MACRO_END.search(text, position)
            position = macro_end.end() if macro_end else len(text)
    return entries


def _bearer_token(credentials: Credentials) -> str | None:
    """The token itself, or read from its file, which must be this user's or root's: files in
    /tmp are anyone's to plant.  A symlink is followed (a Kubernetes token is one), unless it
    is in a directory that others may write, where anyone could have put it."""
    if credentials.bearer_token is not None:
        return credentials.bearer_token
    path = credentials.bearer_token_file
    if path is None:
        return None
    try:
        fd = open_trusted(path, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)
        if isinstance(fd, str):
            raise CredentialError(f"the bearer token file {path} {fd}")
        try:
            token = os.read(fd, 1 << 20).decode("utf-8", "replace").strip()
        finally:
            os.close(fd)
    except OSError as exc:
        raise CredentialError(f"cannot read the bearer token file {path}: {exc.strerror}") from None
    if not one_word(token):
        raise CredentialError(f"the bearer token file {path} does not hold one token")
    return token
