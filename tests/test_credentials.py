"""Certificates and credentials against a real nginx on 127.0.0.1, with a test CA made by openssl:
custom CA bundles, a client-certificate vhost, a bearer-token location and basic auth (from
``.netrc`` and from the user info of a URL).  Each works with the right credentials, and each
failure is one line naming its cause; no credential is ever shown or stored."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

import sharedcache
from nginx import Nginx, free_port, require_nginx
from scutil import SC, Sleeper, check_tree, control, interpreter_for, sample_files, sc, sc_env, tarball_bytes
from sharedcache.config.settings import Credentials, FetchPolicy
from sharedcache.errors import ConfigError, DownloadError

FILES = sample_files(n=3, size=5_000)
DATA = tarball_bytes(FILES)
SHA256 = "sha256:" + hashlib.sha256(DATA).hexdigest()
TOKEN = "eyJ0ZXN0IjoidG9rZW4ifQ.good-token"
USER, PASSWORD = "alice", "s3cret-pw"
# A second login, whose password only a quoted .netrc word can give.
QUOTED_USER, QUOTED_PASSWORD = "bob", 's3cret "quoted" \\ pw\t'
# Every variable that could bring credentials in from the environment the tests run in.
CREDENTIAL_VARIABLES = ("SSL_CERT_FILE", "SSL_CERT_DIR", "CURL_CA_BUNDLE", "X509_CERT_DIR", "X509_USER_PROXY",
                        "BEARER_TOKEN", "BEARER_TOKEN_FILE", "XDG_RUNTIME_DIR", "NETRC")


def _openssl(*args: str | Path, cwd: Path) -> None:
    subprocess.run(["openssl", *map(str, args)], cwd=cwd, check=True, capture_output=True, timeout=60)


def _certificate(pki: Path, name: str, ca: str, *, server: bool) -> None:
    """``name.key`` and ``name.pem``, signed by the CA ``ca`` (``ca.key``, ``ca.pem``)."""
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-subj", f"/CN={name}",
             "-out", f"{name}.csr", cwd=pki)
    extensions = pki / f"{name}.ext"
    # The extensions RFC 5280 asks for, which Python 3.13 checks (VERIFY_X509_STRICT) as urllib3 does.
    profile = "basicConstraints=CA:FALSE\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n"
    extensions.write_text(profile + ("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n"
                                     if server else "extendedKeyUsage=clientAuth\n"))
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-CAcreateserial",
             "-days", "2", "-sha256", "-extfile", extensions, "-out", f"{name}.pem", cwd=pki)


class CredentialServers:
    """nginx serving /public/, /token/ (bearer token) and /basic/ (basic auth) on ``port``, a vhost
    on ``cert_port`` that wants a client certificate of the test CA (/to-cert/ on ``port``
    redirects there), and plain HTTP on ``redirect_port`` that serves /basic/ too and redirects
    every other request to ``port`` (as a proxy, it serves any host name, none to resolve)."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.pki = home / "pki"
        self.pki.mkdir()
        for ca in ("ca", "other-ca"):
            _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{ca}.key", "-out", f"{ca}.pem",
                     "-days", "2", "-subj", f"/CN=shared-cache test {ca}", "-addext",
                     "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
                     cwd=self.pki)
        _certificate(self.pki, "server", "ca", server=True)
        _certificate(self.pki, "client", "ca", server=False)
        _certificate(self.pki, "stranger", "other-ca", server=False)
        # A grid proxy holds the certificate and its key in one file.
        (self.pki / "proxy.pem").write_bytes((self.pki / "client.pem").read_bytes() + (self.pki / "client.key").read_bytes())
        (self.pki / "proxy.pem").chmod(0o600)
        self.ca_dir = self.pki / "hashed"
        self.ca_dir.mkdir()
        shutil.copy(self.pki / "ca.pem", self.ca_dir / "ca.pem")
        _openssl("rehash", self.ca_dir, cwd=self.pki)
        root = home / "root"
        for location in ("public", "token", "basic", "cert"):
            (root / location).mkdir(parents=True)
            (root / location / "data.tgz").write_bytes(DATA)
        (home / "htpasswd").write_text("".join(
            f"{user}:{{SHA}}{base64.b64encode(hashlib.sha1(password.encode()).digest()).decode()}\n"
            for user, password in ((USER, PASSWORD), (QUOTED_USER, QUOTED_PASSWORD))))
        self.port, self.cert_port, self.redirect_port = free_port(), free_port(), free_port()
        tls = f"ssl_certificate {self.pki}/server.pem; ssl_certificate_key {self.pki}/server.key; root {root};"
        self.server = Nginx(home, f"""
    map $http_authorization $token_refusal {{ "" 401; "Bearer {TOKEN}" ""; default 403; }}
    server {{
        listen 127.0.0.1:{self.port} ssl; {tls}
        location /token/ {{
            if ($token_refusal = 401) {{ return 401; }}
            if ($token_refusal = 403) {{ return 403; }}
        }}
        location /basic/ {{ auth_basic "shared-cache test"; auth_basic_user_file {home}/htpasswd; }}
        location /to-cert/ {{ return 302 https://127.0.0.1:{self.cert_port}/cert/data.tgz; }}
    }}
    server {{
        listen 127.0.0.1:{self.cert_port} ssl; {tls}
        ssl_client_certificate {self.pki}/ca.pem;
        ssl_verify_client optional_no_ca;  # an untrusted one gets 403, not 400
        location / {{ if ($ssl_client_verify != SUCCESS) {{ return 403; }} }}
    }}
    server {{
        listen 127.0.0.1:{self.redirect_port}; root {root};
        location / {{ return 302 https://127.0.0.1:{self.port}$request_uri; }}
        location /basic/ {{ auth_basic "shared-cache test"; auth_basic_user_file {home}/htpasswd; }}
    }}""", [self.port, self.cert_port, self.redirect_port])

    def url(self, path: str, *, cert: bool = False, userinfo: str = "") -> str:
        return f"https://{userinfo}127.0.0.1:{self.cert_port if cert else self.port}{path}"

    def stop(self) -> None:
        self.server.stop()


@pytest.fixture(scope="module")
def nginx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CredentialServers]:
    require_nginx()
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed (tools/test.sh installs it when run as root with apt-get)")
    server = CredentialServers(tmp_path_factory.mktemp("nginx"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A home without a .netrc, and a base directory in it."""
    path = tmp_path / "home"
    (path / "base").mkdir(parents=True)
    return path


def env(home: Path, **variables: str | Path) -> dict[str, str]:
    """sc's environment: none of the credentials of the environment the tests run in, HOME=home."""
    result = sc_env(HOME=str(home))
    for name in CREDENTIAL_VARIABLES:
        result.pop(name, None)
    result.update({name: str(value) for name, value in variables.items()})
    return result


def use(home: Path, url: str, *args: str, base: Path | None = None, prefix: Sequence[str] = (),
        **variables: str | Path) -> subprocess.CompletedProcess[str]:
    """``sc --use`` of the test data at ``url`` in ``base`` (default: a fresh one, so that every
    call downloads), run by the command ``prefix`` if given."""
    base = base if base is not None else Path(tempfile.mkdtemp(dir=home))
    with Sleeper() as owner:
        return sc("--use", "-d", str(base), "--pid", str(owner.pid), *args, f"http:{url}", SHA256, "tar",
                  env=env(home, **variables), prefix=prefix)


# A program's sharedcache.use() of the recipe ARGV[1:-2] in the base ARGV[-2], with a fetch policy of
# its own: credentials of the CA file ARGV[-1], or none if it is empty.  Its error is one line, as sc's.
_USE_WITH_A_FETCH_POLICY = r"""
import sys
import sharedcache
from sharedcache.config.settings import Credentials, FetchPolicy

*words, base, ca_file = sys.argv[1:]
fetch = FetchPolicy(credentials=Credentials(ca_file=ca_file) if ca_file else None)
try:
    with sharedcache.use(*words, directories=base, keep=True, fetch=fetch) as path:
        print(path)
except sharedcache.SharedCacheError as e:
    sys.exit(f"sc: error: {e}")
"""


def use_from_python(home: Path, url: str, ca_file: str | Path = "", *, prefix: Sequence[str] = (),
                    **variables: str | Path) -> subprocess.CompletedProcess[str]:
    """A program's ``sharedcache.use()`` of the test data at ``url`` in a fresh base, kept (the
    program ends as it prints the path), with ``FetchPolicy(credentials=Credentials(ca_file=...))``
    or, without ``ca_file``, ``FetchPolicy(credentials=None)``; run by the command ``prefix`` if given."""
    base = tempfile.mkdtemp(dir=home)
    return subprocess.run([*prefix, sys.executable, "-c", _USE_WITH_A_FETCH_POLICY, f"http:{url}", SHA256, "tar",
                           base, str(ca_file)], capture_output=True, text=True, timeout=60, env=env(home, **variables))


def succeeded(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, result.stderr
    check_tree(Path(result.stdout.strip()), FILES)


def failed(result: subprocess.CompletedProcess[str], cause: str, status: int = 1) -> str:
    """The one error line, which must name the cause."""
    assert result.returncode == status, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("sc: error: "), result.stderr
    assert cause in lines[0]
    return lines[0]


def test_server_certificates_are_checked_against_the_ca_bundles_given(nginx: CredentialServers, home: Path) -> None:
    url = nginx.url("/public/data.tgz")
    failed(use(home, url), f"cannot download {url}: untrusted server certificate (")
    succeeded(use(home, url, SSL_CERT_FILE=nginx.pki / "ca.pem"))
    succeeded(use(home, url, SSL_CERT_DIR=nginx.ca_dir))
    succeeded(use(home, url, X509_CERT_DIR=nginx.ca_dir))  # grid CAs, trusted besides the system's
    failed(use(home, url, SSL_CERT_FILE=nginx.pki / "other-ca.pem"), "untrusted server certificate")
    failed(use(home, url, SSL_CERT_FILE=home / "missing.pem"), f"SSL_CERT_FILE: cannot use {home}/missing.pem: ",
           status=2)
    # curl's variable, where OpenSSL's are not set (the CA bundle of a site's curl users).
    succeeded(use(home, url, CURL_CA_BUNDLE=nginx.pki / "ca.pem"))
    failed(use(home, url, CURL_CA_BUNDLE=nginx.pki / "ca.pem", SSL_CERT_FILE=nginx.pki / "other-ca.pem"),
           "untrusted server certificate")


def test_a_plain_http_url_redirected_to_https_is_checked_against_the_ca_bundles_given(
        nginx: CredentialServers, home: Path) -> None:
    # A plain-HTTP download makes its TLS context only when a redirect asks for TLS: it must be
    # the one the settings say, not urllib3's default.
    url = f"http://127.0.0.1:{nginx.redirect_port}/public/data.tgz"
    failed(use(home, url), "untrusted server certificate")
    succeeded(use(home, url, SSL_CERT_FILE=nginx.pki / "ca.pem"))
    succeeded(use(home, url, X509_CERT_DIR=nginx.ca_dir))


def test_bearer_token_in_the_wlcg_discovery_order(nginx: CredentialServers, home: Path) -> None:
    url, ca = nginx.url("/token/data.tgz"), nginx.pki / "ca.pem"
    failed(use(home, url, SSL_CERT_FILE=ca), f"HTTP 401 Unauthorized for {url} (no credentials were sent)")
    line = failed(use(home, url, SSL_CERT_FILE=ca, BEARER_TOKEN="wrong-token"),
                  f"HTTP 403 Forbidden for {url} (sent the bearer token from BEARER_TOKEN)")
    assert "wrong-token" not in line
    succeeded(use(home, url, SSL_CERT_FILE=ca, BEARER_TOKEN=TOKEN))
    token_file = home / "token"
    token_file.write_text(TOKEN + "\n")
    succeeded(use(home, url, SSL_CERT_FILE=ca, BEARER_TOKEN_FILE=token_file))
    # BEARER_TOKEN comes before BEARER_TOKEN_FILE.
    failed(use(home, url, SSL_CERT_FILE=ca, BEARER_TOKEN="wrong-token", BEARER_TOKEN_FILE=token_file), "HTTP 403")
    # A token as Kubernetes projects it: a link to a link to the file (it was refused).
    projected = home / "serviceaccount"
    (projected / "..2026_12_02").mkdir(parents=True)
    (projected / "..2026_12_02" / "token").write_text(TOKEN)
    (projected / "..data").symlink_to("..2026_12_02")
    (projected / "token").symlink_to("..data/token")
    succeeded(use(home, url, SSL_CERT_FILE=ca, BEARER_TOKEN_FILE=projected / "token"))
    # In a directory that others may write, a link is anyone's: not followed.
    shared = home / "shared"
    shared.mkdir(mode=0o1777)
    shared.chmod(0o1777)
    (shared / "token").symlink_to(token_file)
    failed(use(home, url, SSL_CERT_FILE=ca, BEARER_TOKEN_FILE=shared / "token"),
           f"the bearer token file {shared / 'token'} is a symbolic link in a directory that others may write")
    runtime = home / "run"
    runtime.mkdir()
    (runtime / f"bt_u{os.getuid()}").write_text(TOKEN)
    succeeded(use(home, url, SSL_CERT_FILE=ca, XDG_RUNTIME_DIR=runtime))
    # Never in clear text: over http:// the token is not sent.
    assert Credentials(bearer_token=TOKEN) is not None
    from sharedcache.loaders.credentials import Authorization

    assert Authorization(Credentials(bearer_token=TOKEN), "http://127.0.0.1/x", None).headers == {}
    assert TOKEN not in repr(Credentials(bearer_token=TOKEN))


def test_netrc_gives_basic_auth(nginx: CredentialServers, home: Path) -> None:
    url, ca = nginx.url("/basic/data.tgz"), nginx.pki / "ca.pem"
    failed(use(home, url, SSL_CERT_FILE=ca), f"HTTP 401 Unauthorized for {url} (no credentials were sent)")
    netrc = home / ".netrc"
    netrc.write_text(f"machine 127.0.0.1 login {USER} password wrong-pw\n")
    line = failed(use(home, url, SSL_CERT_FILE=ca), f"HTTP 401 Unauthorized for {url} (sent the {netrc} login for 127.0.0.1)")
    assert "wrong-pw" not in line
    netrc.write_text(f"machine other.example login bob password x\nmachine 127.0.0.1 login {USER} password {PASSWORD}\n")
    succeeded(use(home, url, SSL_CERT_FILE=ca))
    netrc.write_bytes(f"machine 127.0.0.1 login {USER} password \xff\n".encode("latin-1"))
    failed(use(home, url, SSL_CERT_FILE=ca), f"cannot read {netrc}: it is not UTF-8 text (byte 39)")


# A .netrc of 128 KiB, the largest read (as curl reads it since 8.12), whose entry is at its end.
LARGEST_NETRC = f"\nmachine 127.0.0.1 login {USER} password {PASSWORD}\n".rjust(128 * 1024, "#")


@pytest.mark.parametrize("text", [
    f"machine 127.0.0.1 port 443 login {USER} password {PASSWORD} port 443\n",
    f"machine 127.0.0.1 login {USER} sslcert password {PASSWORD}\n",
    f"macdef init\nmachine 127.0.0.1 login {USER} password wrong-pw\n\n"
    f"machine 127.0.0.1 login {USER} password {PASSWORD}\nmacdef bye\nquit\n",
    rf'machine 127.0.0.1 login {QUOTED_USER} password "s3cret \"quoted\" \\ pw\t"' "\n",
    f"machine 127.0.0.1 login {USER} password {PASSWORD}\nmachine 127.0.0.1 login {USER} password wrong-pw\n",
    f"machine 127.0.0.1 account project\ndefault login {USER} password {PASSWORD}\n",
    f"MACHINE 127.0.0.1 Login {USER} PASSWORD {PASSWORD}\n",
    f"machine 127.0.0.1 user {USER} password {PASSWORD}\n",
    f"\ufeffmachine 127.0.0.1 login {USER} password {PASSWORD}\r\ndefault login {USER} password wrong-pw\r\n",
    LARGEST_NETRC,
], ids=["words-of-other-tools", "a-word-between-login-and-password", "macros-skipped", "quoted-password",
        "the-first-entry-wins", "default-when-no-entry-gives-a-login", "keywords-in-any-case",
        "user-as-pythons-netrc-reads-it",
        "a-byte-order-mark-and-crlf-as-windows-editors-write", "the-largest-file-read"])
def test_netrc_is_read_as_curl_reads_it(nginx: CredentialServers, home: Path, text: str) -> None:
    # Users share one .netrc between curl, wget, git and sc: a word sc does not know is skipped
    # (Python's netrc refused the whole file for it).
    (home / ".netrc").write_text(text)
    succeeded(use(home, nginx.url("/basic/data.tgz"), SSL_CERT_FILE=nginx.pki / "ca.pem"))


@pytest.mark.parametrize(("text", "cause"), [
    (f'machine 127.0.0.1 login {USER}\n  password "{PASSWORD}\n', "a quote is not closed (line 2)"),
    # curl ends the line at a NUL and drops what follows (7.88 drops the next line too): the
    # password must not be cut there and sent, nor a NUL.
    (f"machine 127.0.0.1 login {USER}\n  password {PASSWORD}\0-and-more\n", "it holds a NUL byte (line 2)"),
    # Read whole, a runaway file would cost its size in memory at every download.
    (LARGEST_NETRC + "\n", "it is larger than 128 KiB"),
], ids=["a-quote-left-open", "a-nul-byte", "larger-than-128-KiB"])
def test_a_netrc_that_cannot_be_read_is_one_line_without_its_words(
        nginx: CredentialServers, home: Path, text: str, cause: str) -> None:
    netrc = home / ".netrc"
    netrc.write_text(text)
    line = failed(use(home, nginx.url("/basic/data.tgz"), SSL_CERT_FILE=nginx.pki / "ca.pem"),
                  f"cannot read {netrc}: {cause}")
    assert PASSWORD not in line


def test_netrc_machine_names_match_in_ascii_case_only(nginx: CredentialServers, home: Path) -> None:
    # As curl: by Unicode's rules (str.lower) a name written with a Kelvin sign is the same name
    # written with a "k", and its login went to that other host.  k.example is reached through
    # nginx's plain-HTTP port as a proxy.
    url, proxy, netrc = "http://k.example/basic/data.tgz", f"http://127.0.0.1:{nginx.redirect_port}", home / ".netrc"
    netrc.write_text(f"machine \u212a.example login {USER} password {PASSWORD}\n")
    failed(use(home, url, http_proxy=proxy),
           f"HTTP 401 Unauthorized for {url} via proxy {proxy} (no credentials were sent)")
    netrc.write_text(f"machine \u212a.example login {USER} password wrong-pw\nmachine K.EXAMPLE login {USER} "
                     f"password {PASSWORD}\n")
    succeeded(use(home, url, http_proxy=proxy))


def test_user_info_in_a_url_is_sent_and_never_shown_or_stored(nginx: CredentialServers, home: Path) -> None:
    ca, base = nginx.pki / "ca.pem", home / "base"
    good = nginx.url("/basic/data.tgz", userinfo=f"{USER}:{PASSWORD}@")
    bad = nginx.url("/basic/data.tgz", userinfo=f"{USER}:wrong-pw@")
    line = failed(use(home, bad, "--name", "refused", base=base, SSL_CERT_FILE=ca),
                  f"HTTP 401 Unauthorized for {nginx.url('/basic/data.tgz')} (sent the user and password of the URL)")
    assert "wrong-pw" not in line
    made = use(home, good, "-v", base=base, SSL_CERT_FILE=ca)
    succeeded(made)
    listing = sc("list", "-d", str(base), env=env(home))
    shown = made.stdout + made.stderr + listing.stdout + listing.stderr
    assert "populating" in made.stderr and USER not in shown and PASSWORD not in shown
    # Nothing under the base directory holds a credential: entry metadata, records, error files.
    for directory, _, files in os.walk(base):
        for file in files:
            content = Path(directory, file).read_bytes()
            assert PASSWORD.encode() not in content and b"wrong-pw" not in content, file
    assert list((control(base) / "populate").glob("refused.error"))  # the error record was looked at
    # The same checksummed data from another URL, without user info, is the same repository.
    assert use(home, nginx.url("/public/data.tgz"), base=base, SSL_CERT_FILE=ca).stdout == made.stdout


def test_user_info_that_is_not_utf_8_is_refused_before_anything_is_made(origin, home: Path) -> None:
    # The check that words are UTF-8 text read the identity, which leaves user info out: such a
    # word got as far as a population, then failed as an internal error (basic auth is UTF-8),
    # leaving its work directory behind.
    url, base = origin.add("/data.tgz", DATA), home / "base"
    with Sleeper() as owner:
        for user_info in (b"\xff", b"alice:pa\xffss"):
            word = os.fsdecode(b"http:http://" + user_info + b"@" + url.removeprefix("http://").encode())
            failed(sc("--use", "-d", str(base), "--pid", str(owner.pid), word, SHA256, "tar", env=env(home)),
                   f"the user info of loader word 'http:{url}' is not UTF-8 text", status=2)
            assert not list(base.iterdir())
            assert origin.stats("/data.tgz").gets == 0


def test_client_certificates_from_the_settings_and_the_grid_proxy(nginx: CredentialServers, home: Path) -> None:
    url, ca, pki = nginx.url("/cert/data.tgz", cert=True), nginx.pki / "ca.pem", nginx.pki
    failed(use(home, url, SSL_CERT_FILE=ca), f"HTTP 403 Forbidden for {url} (no credentials were sent)")
    succeeded(use(home, url, SSL_CERT_FILE=ca, X509_USER_PROXY=pki / "proxy.pem"))
    stranger = Credentials(ca_file=str(ca), cert_file=str(pki / "stranger.pem"), key_file=str(pki / "stranger.key"))
    with pytest.raises(DownloadError, match=rf"HTTP 403 Forbidden for {url} \(sent the client certificate {pki}/stranger.pem\)"):
        with sharedcache.use(f"http:{url}", SHA256, "tar", directories=[tempfile.mkdtemp(dir=home)],
                             fetch=FetchPolicy(credentials=stranger)):
            pass
    client = Credentials(ca_file=str(ca), cert_file=str(pki / "client.pem"), key_file=str(pki / "client.key"))
    with sharedcache.use(f"http:{url}", SHA256, "tar", directories=[tempfile.mkdtemp(dir=home)],
                         fetch=FetchPolicy(credentials=client)) as path:
        check_tree(path, FILES)
    failed(use(home, url, SSL_CERT_FILE=ca, X509_USER_PROXY=pki / "client.csr"),
           f"cannot use the client certificate {pki}/client.csr: ")


@pytest.mark.parametrize("where", ["SSL_CERT_FILE", "SSL_CERT_DIR", "X509_USER_PROXY", "ca_bundle", "client_cert",
                                   "client_key"])
def test_a_credential_file_that_is_a_fifo_is_one_line_not_a_wait_for_good(nginx: CredentialServers, home: Path, where: str) -> None:
    # OpenSSL opened the paths it was given itself, blocking: a FIFO held the download (and its
    # population) for good, past --timeout, waiting for a writer.  One in a hashed directory, named
    # by the hash of the CA that signed the server's certificate, was opened in the handshake.
    fifo, pki, config = home / "fifo", nginx.pki, home / "site.config"
    ca_hash = subprocess.run(["openssl", "x509", "-hash", "-noout", "-in", pki / "ca.pem"], capture_output=True,
                             text=True, check=True, timeout=60).stdout.strip()
    variables: dict[str, str | Path] = {"SSL_CERT_FILE": pki / "ca.pem"}
    if where == "SSL_CERT_DIR":
        fifo = home / "cas" / f"{ca_hash}.0"
        fifo.parent.mkdir()
        (fifo.parent / "ffffffff.0").symlink_to(home / "gone.pem")  # skipped, as OpenSSL skips it
        variables = {"SSL_CERT_DIR": fifo.parent}
    elif where in ("SSL_CERT_FILE", "X509_USER_PROXY"):
        variables[where] = fifo
    else:
        config.write_text(f"{where} = {fifo}\n" + (f"client_cert = {pki / 'client.pem'}\n" if where == "client_key" else ""))
        variables["SC_CONFIG"] = config
    os.mkfifo(fifo)
    base = home / "base"
    with Sleeper() as owner:
        started = subprocess.Popen([*SC, "--use", "-d", str(base), "--pid", str(owner.pid), "--timeout", "5",
                                    f"http:{nginx.url('/public/data.tgz')}", SHA256, "tar"],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   env=env(home, **variables), start_new_session=True)
        try:
            _, stderr = started.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(started.pid, signal.SIGKILL)  # sc and whatever it started, in the group it leads
            started.communicate(timeout=10)
            pytest.fail(f"sc waited for good on the FIFO {fifo} given as {where}")
    what = {"SSL_CERT_FILE": "CA bundle", "SSL_CERT_DIR": "CA bundle", "ca_bundle": "CA bundle",
            "client_key": "client key"}.get(where, "client certificate")
    assert started.returncode == 1, stderr
    assert stderr.startswith("sc: error: ") and stderr.count("\n") == 1, stderr
    assert stderr.endswith(f": cannot use the {what} {fifo}: it is not a regular file\n"), stderr
    assert not list((control(base) / "populate").glob("*.work"))


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root, to run sc as a user who may not read a file")
def test_a_file_of_a_hashed_directory_that_holds_no_readable_ca_is_skipped_as_openssl_skips_it(
        nginx: CredentialServers, reachable_tmp: Path) -> None:
    # A file of the hashed directory that the user may not read, or a directory named as a CA's
    # file: sc read every file up front and failed every HTTPS download in one line ("cannot use
    # the CA bundle ...: Permission denied"), where OpenSSL, reading the file it needs when it
    # needs it, failed none whose CA is elsewhere.
    ca = nginx.pki / "ca.pem"
    ca_hash = subprocess.run(["openssl", "x509", "-hash", "-noout", "-in", ca], capture_output=True, text=True,
                             check=True, timeout=60).stdout.strip()
    cas, home = reachable_tmp / "cas", reachable_tmp / "home"
    cas.mkdir()
    (cas / f"{ca_hash}.0").write_bytes(ca.read_bytes())
    (cas / "00000000.0").write_bytes(ca.read_bytes())
    (cas / "00000000.0").chmod(0o600)  # root's: nobody may not read it
    (cas / "11111111.0").mkdir()
    home.mkdir()
    os.chown(home, 65534, 65534)
    interpreter, python_env = interpreter_for(65534, 65534)
    variables = {**env(home, SSL_CERT_DIR=cas), "PYTHONPATH": python_env["PYTHONPATH"]}

    def use_as_nobody(base: str) -> subprocess.CompletedProcess[str]:
        (home / base).mkdir()
        os.chown(home / base, 65534, 65534)
        with Sleeper() as owner:
            return subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", interpreter, "-m",
                                   "sharedcache", "--use", "-d", str(home / base), "--pid", str(owner.pid),
                                   f"http:{nginx.url('/public/data.tgz')}", SHA256, "tar"],
                                  capture_output=True, text=True, timeout=120, env=variables)

    succeeded(use_as_nobody("base"))
    # The CA the server's certificate needs, unreadable: the handshake's refusal, not the file's.
    (cas / f"{ca_hash}.0").chmod(0o600)
    result = use_as_nobody("other-base")
    failed(result, "certificate")
    assert "Permission denied" not in result.stderr, result.stderr


def test_the_client_certificate_is_presented_to_the_disk_server_a_redirect_leads_to(nginx: CredentialServers, home: Path) -> None:
    # Grid storage redirects from its head node to the disk server that holds the file, which
    # asks for the certificate, as curl and davix present it there.  The Authorization header
    # is not sent there, and a refusal there says so.
    url, ca, pki = nginx.url("/to-cert/data.tgz"), nginx.pki / "ca.pem", nginx.pki
    target = nginx.url("/cert/data.tgz", cert=True)
    succeeded(use(home, url, SSL_CERT_FILE=ca, X509_USER_PROXY=pki / "proxy.pem"))
    failed(use(home, url, SSL_CERT_FILE=ca, BEARER_TOKEN="t0ken"),
           f"HTTP 403 Forbidden for {url}, redirected to {target} (redirected to another origin: the "
           "Authorization of the URL was not sent there)")


class TlsProxy:
    """An HTTPS forward proxy on 127.0.0.1 with the server certificate of the test CA: it tunnels
    ``CONNECT`` and forwards plain-HTTP GETs; ``seen`` lists (method, target, the subject of the
    client certificate shown to it, or None)."""

    def __init__(self, pki: Path) -> None:
        import http.server
        import select
        import ssl
        import threading
        import urllib.request

        seen = self.seen = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _seen(self) -> None:
                certificate = self.connection.getpeercert()
                seen.append((self.command, self.path, dict(x[0] for x in certificate["subject"])["commonName"]
                             if certificate else None))

            def do_CONNECT(self) -> None:
                self._seen()
                host, _, port = self.path.rpartition(":")
                with socket.create_connection((host, int(port)), timeout=10) as upstream:
                    self.send_response(200)
                    self.end_headers()
                    ends = (self.connection, upstream)
                    while True:
                        ready, _, _ = select.select(ends, [], [], 10)
                        data = ready[0].recv(65536) if ready else b""
                        if not data:
                            break
                        ends[ready[0] is self.connection].sendall(data)
                self.close_connection = True

            def do_GET(self) -> None:
                self._seen()
                opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
                with opener.open(self.path, timeout=10) as answer:
                    body = answer.read()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(pki / "server.pem", pki / "server.key")
        context.verify_mode = ssl.CERT_OPTIONAL  # to see whether a client certificate is shown
        context.load_verify_locations(pki / "ca.pem")
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def tls_proxy(nginx: CredentialServers) -> Iterator[TlsProxy]:
    proxy = TlsProxy(nginx.pki)
    try:
        yield proxy
    finally:
        proxy.stop()


def test_an_https_proxy_is_verified_against_the_ca_bundle_and_shown_no_client_certificate(
        nginx: CredentialServers, origin, tls_proxy: TlsProxy, home: Path) -> None:
    config, pki = home / "site.config", nginx.pki
    config.write_text(f"ca_bundle = {pki / 'ca.pem'}\n")
    url, plain = nginx.url("/cert/data.tgz", cert=True), origin.add("/data.tgz", DATA)
    # Through the CONNECT tunnel, to the origin that wants the client certificate: the proxy is
    # trusted through the ca_bundle setting (not the system's CAs), and sees no certificate.
    succeeded(use(home, url, SC_CONFIG=config, X509_USER_PROXY=pki / "proxy.pem", https_proxy=tls_proxy.url))
    # A plain-HTTP URL that the proxy forwards: it is not the origin, and sees no certificate either.
    succeeded(use(home, plain, SC_CONFIG=config, X509_USER_PROXY=pki / "proxy.pem", http_proxy=tls_proxy.url))
    assert tls_proxy.seen == [("CONNECT", f"127.0.0.1:{nginx.cert_port}", None), ("GET", plain, None)]
    # A proxy whose certificate is not trusted is one line, at once.
    failed(use(home, url, SSL_CERT_FILE=pki / "other-ca.pem", https_proxy=tls_proxy.url),
           f"cannot download {url} via proxy {tls_proxy.url}: untrusted server certificate (")


DISCOVER = """
import json, os, sys
sys.path.insert(0, sys.argv[1])
from sharedcache.config.settings import Credentials
found = Credentials.discover({"HOME": "/nonexistent"})
print(json.dumps([found.cert_file, found.bearer_token_file, found.found()]))
"""


@pytest.mark.skipif(os.getuid() != 0 or shutil.which("unshare") is None,
                    reason="needs root and unshare: /tmp is replaced by a private tmpfs in a mount namespace")
def test_credentials_in_tmp_are_taken_only_from_the_users_own_files() -> None:
    uid = os.getuid()
    source = str(Path(sharedcache.__file__).parent.parent)
    # A private tmpfs hides /tmp: the interpreter and the project are reached through a bind mount
    # of the old /tmp (a checkout or a venv may live there), made in the same mount namespace.
    old_tmp = Path(tempfile.mkdtemp(dir="/run" if os.path.isdir("/run") else "/var/tmp"))
    python, source = (path.replace("/tmp/", f"{old_tmp}/", 1) if path.startswith("/tmp/") else path
                      for path in (sys.executable, source))
    script = f"""
set -e
mount --bind /tmp {old_tmp}
mount -t tmpfs tmpfs /tmp
discover() {{ {python} -c '{DISCOVER}' {source}; }}
discover
echo token > /tmp/bt_u{uid}; cp /dev/null /tmp/x509up_u{uid}
discover
chown 65534 /tmp/bt_u{uid} /tmp/x509up_u{uid}
discover
rm /tmp/bt_u{uid} /tmp/x509up_u{uid}; echo token > /tmp/real; ln -s /tmp/real /tmp/bt_u{uid}; ln -s /tmp/real /tmp/x509up_u{uid}
discover
"""
    try:
        result = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                                capture_output=True, text=True, timeout=60)
    finally:
        old_tmp.rmdir()  # the bind mount lived in the namespace that ended
    assert result.returncode == 0, result.stderr
    # (sc config shows what gave them: a default path.)
    none = [None, None, {}]
    own = [f"/tmp/x509up_u{uid}", f"/tmp/bt_u{uid}", {"client_cert": [f"/tmp/x509up_u{uid}", "/tmp/x509up_u<uid>"],
                                                      "bearer_token_file": [f"/tmp/bt_u{uid}", "/tmp/bt_u<uid>"]}]
    assert [json.loads(line) for line in result.stdout.splitlines()] == [none, own, none, none]


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to give a file to another user")
def test_a_token_file_of_another_user_is_refused(tmp_path: Path) -> None:
    from sharedcache.errors import LoaderError
    from sharedcache.loaders.credentials import Authorization

    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    os.chown(token_file, 65534, 65534)
    credentials = Credentials.discover({"BEARER_TOKEN_FILE": str(token_file), "HOME": str(tmp_path)})
    with pytest.raises(LoaderError, match=f"^the bearer token file {token_file} belongs to another user \\(uid 65534\\)$"):
        Authorization(credentials, "https://127.0.0.1/data.tgz", None)


@pytest.mark.parametrize("token", ["two words", " "])
def test_a_bearer_token_that_is_not_one_word_is_named_in_one_line(origin, home: Path, token: str) -> None:
    # BEARER_TOKEN is a standard variable, not one of the settings: its error names it.
    url = origin.add("/data.tgz", DATA)
    for result in (sc("config", env=env(home, BEARER_TOKEN=token)), use(home, url, BEARER_TOKEN=token)):
        assert result.returncode == 2, result.stderr
        assert result.stderr == "sc: error: BEARER_TOKEN: must be one word of printable ASCII characters\n"


def test_credentials_that_cannot_be_used_do_not_fail_plain_http(origin, home: Path) -> None:
    # As with curl: a stale CA variable (a removed environment's) fails no plain-HTTP download.
    url = origin.add("/data.tgz", DATA)
    succeeded(use(home, url, X509_USER_PROXY=home / "expired-and-gone"))
    for variable in ("SSL_CERT_FILE", "SSL_CERT_DIR", "CURL_CA_BUNDLE"):
        succeeded(use(home, url, **{variable: home / "missing"}))


def test_a_variable_naming_the_home_of_an_unknown_user_fails_only_what_uses_it(origin, home: Path) -> None:
    # "~nouser/x" in a standard variable (a removed account's) was a usage error of every plain-HTTP
    # download, named as a Credentials(...) argument for X509_*; like any path that names nothing,
    # it is refused, naming its variable, by the downloads that use it alone.
    url = origin.add("/data.tgz", DATA)
    unknown = "~no-such-user-of-sc/x"
    for variable in ("SSL_CERT_FILE", "SSL_CERT_DIR", "CURL_CA_BUNDLE", "X509_USER_PROXY", "X509_CERT_DIR"):
        succeeded(use(home, url, **{variable: unknown}))
    tls = url.replace("http://", "https://")  # (never connected to: the check comes first)
    result = use(home, tls, SSL_CERT_FILE=unknown)
    assert (result.returncode, result.stderr) == (
        2, f"sc: error: SSL_CERT_FILE: cannot use {unknown}: No such file or directory\n"), result.stderr
    # A known home is the home of the environment discovered, the others' paths as they are.
    found = Credentials.discover({"HOME": str(home), "X509_USER_PROXY": "~/proxy", "X509_CERT_DIR": f"~/cas:{unknown}",
                                  "SSL_CERT_DIR": f"{unknown}:~/certs", "NETRC": unknown})
    assert (found.cert_file, found.grid_ca_dir, found.ca_dir, found.netrc) == (
        f"{home}/proxy", f"{home}/cas:{unknown}", f"{unknown}:{home}/certs", unknown)
    assert found.variables == (("SSL_CERT_DIR", f"{unknown}:{home}/certs"), ("NETRC", unknown))
    with pytest.raises(ConfigError, match=f"^NETRC: cannot use {unknown}: No such file or directory$"):
        found.check_variables(tls=False)


@pytest.mark.skipif(os.getuid() != 0 or shutil.which("setpriv") is None,
                    reason="needs root and setpriv to run sc as a uid without a user entry")
def test_a_user_without_a_home_reads_no_config_file_or_netrc_of_the_working_directory(
        origin, reachable_tmp: Path) -> None:
    # A uid without a user entry and without HOME (env -i, a container runtime, a batch system)
    # has "~" left as it is: taken for the home, it was the working directory's "./~", where
    # anyone who may write there (a shared scratch directory, /tmp) chose this user's settings
    # and had their own login sent.  A relative XDG_CONFIG_HOME is the working directory's too.
    import pwd

    known = {entry.pw_uid for entry in pwd.getpwall()}
    uid = next(uid for uid in range(54321, 64000) if uid not in known)
    interpreter, python_env = interpreter_for(uid, uid)
    shared = reachable_tmp / "shared"
    for planted, text in (("~/.config/shared-cache/config", "keep = yes\n"),
                          ("relative-xdg/shared-cache/config", "max_size = 1M\n"),
                          ("~/.netrc", "machine 127.0.0.1 login mallory password planted\n")):
        (shared / planted).parent.mkdir(parents=True, exist_ok=True)
        (shared / planted).write_text(text)
    shared.chmod(0o1777)
    (shared / "base").mkdir()
    os.chown(shared / "base", uid, uid)
    url = origin.add("/data.tgz", DATA)

    def sc_without_home(*args: str, **variables: str) -> subprocess.CompletedProcess[str]:
        assigned = [f"{name}={value}" for name, value in variables.items()]
        return subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "env", "-i",
                               f"PYTHONPATH={python_env['PYTHONPATH']}", f"SC_DIRECTORIES={shared / 'base'}",
                               *assigned, interpreter, "-m", "sharedcache", *args],
                              cwd=shared, capture_output=True, text=True, timeout=60)

    for shown in (sc_without_home("config"), sc_without_home("config", HOME="/nonexistent",
                                                                 XDG_CONFIG_HOME="relative-xdg")):
        assert shown.returncode == 0, shown.stderr
        assert "keep = (not set)" in shown.stdout and "max_size = (not set)" in shown.stdout, shown.stdout
    with Sleeper() as owner:
        succeeded(sc_without_home("--use", "--pid", str(owner.pid), f"http:{url}", SHA256, "tar"))
    assert origin.stats("/data.tgz").authorizations == []
    # "~/" in a file is a path of the home: without one it is said, not made the working directory's.
    (shared / "site.config").write_text("netrc = ~/.netrc\n")
    failed(sc_without_home("config", SC_CONFIG=str(shared / "site.config")),
           f"{shared}/site.config:1: netrc names '~/.netrc', but this user has no home (no HOME that is an "
           "absolute path, and none in the user database)", status=2)


def test_a_relative_home_is_no_home_and_the_user_database_gives_it(tmp_path: Path) -> None:
    # A relative HOME (HOME=rel) would be the working directory's, so it is not taken: the user
    # database's home is, as without HOME.  It was taken for no home at all: the user file and
    # ~/.netrc were skipped without a word, and a file's "~/" said this user had none.
    import pwd

    from sharedcache.config.files import config_files

    home = pwd.getpwuid(os.getuid()).pw_dir
    if not os.path.isabs(home):
        pytest.skip(f"the user database gives this user no absolute home ({home!r})")
    config = tmp_path / "config"
    config.write_text("directories = ~/sc-base\n")
    (tmp_path / "rel" / ".config" / "shared-cache").mkdir(parents=True)
    (tmp_path / "rel" / ".config" / "shared-cache" / "config").write_text("keep = yes\n")
    shown = sc("config", env=sc_env(HOME="rel", SC_CONFIG=str(config)), cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert f"directories = {home}/sc-base  # {config}:1" in shown.stdout, shown.stdout
    assert "keep = (not set)" in shown.stdout, shown.stdout
    assert config_files({"HOME": "rel"})[1] == (os.path.join(home, ".config", "shared-cache", "config"), "user")


def test_a_variable_naming_a_file_that_cannot_be_used_is_one_line_before_any_connection(origin, home: Path) -> None:
    # The download met them late: a missing NETRC was taken for none (a 401 once connected), an
    # SSL_CERT_DIR without a directory for no CA (an untrusted certificate), and a missing
    # SSL_CERT_FILE was named without its variable.
    url = origin.add("/data.tgz", DATA)
    tls = url.replace("http://", "https://")  # (never connected to: the check comes first)
    (home / "file").write_text("")
    missing = "No such file or directory"
    for variable, path, why in [("SSL_CERT_FILE", home / "missing.pem", missing),
                                ("SSL_CERT_FILE", home, "it is a directory, not a file"),
                                ("CURL_CA_BUNDLE", home / "missing.pem", missing),
                                ("SSL_CERT_DIR", home / "missing", missing),
                                ("SSL_CERT_DIR", home / "file", "it is not a directory"),
                                ("NETRC", home / "missing-netrc", missing),
                                ("NETRC", home, "it is a directory, not a file")]:
        for result in (use(home, url if variable == "NETRC" else tls, base=home / "base", **{variable: path}),
                       sc("config", env=env(home, **{variable: path}))):
            assert result.returncode == 2, result.stderr
            assert result.stderr == f"sc: error: {variable}: cannot use {path}: {why}\n"
    assert origin.stats("/data.tgz").gets == 0
    assert not any((home / "base").iterdir())  # nothing made in the cache
    # One directory of SSL_CERT_DIR's list that can be read is enough, as OpenSSL reads it; and
    # NETRC=/dev/null is a way to have no .netrc.
    succeeded(use(home, url, SSL_CERT_DIR=f"{home / 'missing'}:{home}", NETRC="/dev/null"))


def test_an_https_url_to_a_plain_http_server_says_the_server_speaks_no_tls(origin, home: Path) -> None:
    url = origin.add("/data.tgz", DATA).replace("http://", "https://")
    failed(use(home, url), "TLS failed (WRONG_VERSION_NUMBER): the other end answered without TLS")


def test_discovery_order_of_the_settings_and_the_variables(tmp_path: Path) -> None:
    ca_dir, ca_file, token_file = tmp_path / "cas", tmp_path / "ca.pem", tmp_path / "token"
    ca_dir.mkdir()
    variables = {"SSL_CERT_FILE": "/env/ca.pem", "SSL_CERT_DIR": "/env/cas", "X509_CERT_DIR": "/grid/cas",
                 "X509_USER_PROXY": "/env/proxy", "BEARER_TOKEN": "env-token", "BEARER_TOKEN_FILE": "/env/token",
                 "NETRC": "/env/netrc", "HOME": str(tmp_path)}
    found = Credentials.discover(variables)
    assert (found.ca_file, found.ca_dir, found.grid_ca_dir) == ("/env/ca.pem", "/env/cas", "/grid/cas")
    assert (found.cert_file, found.bearer_token, found.bearer_token_file, found.netrc) == (
        "/env/proxy", "env-token", None, "/env/netrc")
    assert "env-token" not in repr(found) and "env-token" not in repr(FetchPolicy(credentials=found))
    # Settings given explicitly win over the variables (and must name files that are there).
    cert, key, netrc = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "netrc"
    for path in (ca_file, token_file, cert, key, netrc):
        path.write_text("")
    given = Credentials.discover(variables, ca_bundle=str(ca_dir), client_cert=str(cert),
                                 client_key=str(key), bearer_token_file=str(token_file), netrc=str(netrc))
    assert (given.ca_file, given.ca_dir) == (None, str(ca_dir))
    assert (given.cert_file, given.key_file, given.bearer_token, given.bearer_token_file, given.netrc) == (
        str(cert), str(key), None, str(token_file), str(netrc))
    assert Credentials.discover(variables, ca_bundle=str(ca_file)).ca_file == str(ca_file)
    # BEARER_TOKEN_FILE when BEARER_TOKEN is not set; ~/.netrc without NETRC.
    later = Credentials.discover({"BEARER_TOKEN_FILE": "/env/token", "HOME": str(tmp_path)})
    assert (later.bearer_token, later.bearer_token_file, later.token_from) == (None, "/env/token", "BEARER_TOKEN_FILE")
    assert later.netrc == str(tmp_path / ".netrc")


def test_sc_config_shows_the_credentials_that_the_variables_and_default_paths_give(origin, home: Path) -> None:
    # sc config said "(not set)  # default" of every credential setting while a download sent
    # ~/.netrc's login (or BEARER_TOKEN_FILE's token, X509_USER_PROXY's certificate): a user could
    # not tell why a login or token was sent.  What is in force is shown, and what gave it.
    uid, keys = os.getuid(), ("ca_bundle", "client_cert", "client_key", "bearer_token_file", "netrc")
    ca, proxy, token_file, runtime = home / "ca.pem", home / "proxy.pem", home / "token", home / "run"
    runtime.mkdir()
    for path in (ca, proxy, token_file, runtime / f"bt_u{uid}"):
        path.write_text(TOKEN)
    (home / ".netrc").write_text(f"machine 127.0.0.1 login {USER} password {PASSWORD}\n")

    def rows(**variables: str | Path) -> dict[str, str]:
        shown = sc("config", env=env(home, **variables))
        assert shown.returncode == 0, shown.stderr
        assert TOKEN not in shown.stdout and PASSWORD not in shown.stdout, shown.stdout
        return {key: row for key, _, row in (line.partition(" = ") for line in shown.stdout.splitlines())
                if key in keys}

    found = rows()
    assert (found["ca_bundle"], found["client_key"], found["netrc"]) == (
        "(not set)  # default", "(not set)  # default", f"{home}/.netrc  # ~/.netrc"), found
    url = origin.add("/data.tgz", DATA)
    succeeded(use(home, url))
    login = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    assert origin.stats("/data.tgz").authorizations == [f"Basic {login}"]
    assert rows(SSL_CERT_FILE=ca, SSL_CERT_DIR=runtime, X509_USER_PROXY=proxy, BEARER_TOKEN_FILE=token_file,
                NETRC="/dev/null") == {
        "ca_bundle": f"{ca}, {runtime}  # SSL_CERT_FILE, SSL_CERT_DIR", "client_cert": f"{proxy}  # X509_USER_PROXY",
        "client_key": "(not set)  # default", "bearer_token_file": f"{token_file}  # BEARER_TOKEN_FILE",
        "netrc": "/dev/null  # NETRC"}
    found = rows(BEARER_TOKEN=TOKEN, CURL_CA_BUNDLE=ca, XDG_RUNTIME_DIR=runtime)
    assert (found["ca_bundle"], found["bearer_token_file"]) == (
        f"{ca}  # CURL_CA_BUNDLE", "(none: BEARER_TOKEN holds the token)  # BEARER_TOKEN"), found
    found = rows(XDG_RUNTIME_DIR=runtime)
    assert found["bearer_token_file"] == f"{runtime}/bt_u{uid}  # $XDG_RUNTIME_DIR/bt_u<uid>", found
    # A setting, empty or not, is shown as set, and nothing is looked for in its place.
    config = home / "site.config"
    config.write_text(f"netrc =\nbearer_token_file = {token_file}\n")
    found = rows(SC_CONFIG=config, BEARER_TOKEN=TOKEN)
    assert (found["netrc"], found["bearer_token_file"]) == (f"  # {config}:1", f"{token_file}  # {config}:2"), found


def test_a_config_file_names_the_ca_bundle_and_the_bearer_token_file(nginx: CredentialServers, home: Path) -> None:
    config, token_file = home / "site.config", home / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    config.write_text(f"ca_bundle = {nginx.pki / 'ca.pem'}\nbearer_token_file = {token_file}\n")
    succeeded(use(home, nginx.url("/public/data.tgz"), SC_CONFIG=config))
    succeeded(use(home, nginx.url("/token/data.tgz"), SC_CONFIG=config))
    # The option-less settings win over the standard variables, as the settings given do.
    succeeded(use(home, nginx.url("/public/data.tgz"), SC_CONFIG=config, SSL_CERT_FILE=nginx.pki / "other-ca.pem"))


def test_an_empty_credential_setting_is_none_and_nothing_is_looked_for_in_its_place(
        nginx: CredentialServers, home: Path) -> None:
    # "bearer_token_file =" passed `sc config` and failed every HTTPS miss with "cannot read the
    # bearer token file : No such file or directory"; "client_key =" wanted a client_cert.
    ca, pki = nginx.pki / "ca.pem", nginx.pki
    (home / ".netrc").write_text(f"machine 127.0.0.1 login {USER} password {PASSWORD}\n")
    config = home / "site.config"
    config.write_text("bearer_token_file =\nnetrc =\nclient_cert =\nclient_key =\n")
    found = {"SSL_CERT_FILE": ca, "BEARER_TOKEN": TOKEN, "X509_USER_PROXY": pki / "proxy.pem", "SC_CONFIG": config}
    assert sc("config", env=env(home, **found)).returncode == 0
    succeeded(use(home, nginx.url("/public/data.tgz"), **found))
    for path in ("/token/data.tgz", "/basic/data.tgz"):
        failed(use(home, nginx.url(path), **found), "HTTP 401 Unauthorized for ")
    failed(use(home, nginx.url("/cert/data.tgz", cert=True), **found), "(no credentials were sent)")
    # An empty key alone is none too: the grid proxy holds its own.
    config.write_text("client_key =\n")
    succeeded(use(home, nginx.url("/cert/data.tgz", cert=True), **found))


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                    reason="needs root and unshare: the system's CA bundle is the test CA's in a mount namespace")
@pytest.mark.parametrize("without_cas", ["ca_bundle =", "FetchPolicy(credentials=None)"])
def test_an_empty_ca_bundle_setting_or_no_credentials_trust_the_system_s_cas_and_not_the_variables(
        nginx: CredentialServers, home: Path, without_cas: str) -> None:
    # "ca_bundle =" left the CAs to OpenSSL's defaults, which are the files that SSL_CERT_FILE and
    # SSL_CERT_DIR name where they are set: a stale one (a conda leftover, which the setting was
    # given to pass over) failed every HTTPS download, and a CA that one named was trusted.  So
    # did a program's FetchPolicy(credentials=None), documented as the system's CAs.
    config, url = home / "site.config", nginx.url("/public/data.tgz")
    config.write_text("ca_bundle =\n")

    def use_without_cas(prefix: Sequence[str] = (), **variables: str | Path) -> subprocess.CompletedProcess[str]:
        if without_cas == "ca_bundle =":
            return use(home, url, prefix=prefix, SC_CONFIG=config, **variables)
        return use_from_python(home, url, prefix=prefix, **variables)

    failed(use_without_cas(SSL_CERT_FILE=nginx.pki / "ca.pem"), "untrusted server certificate")
    system_bundle = os.path.realpath(ssl.get_default_verify_paths().openssl_cafile)
    if not os.path.isfile(system_bundle):
        pytest.skip(f"OpenSSL's default CA bundle {system_bundle} is not there to be replaced")
    with_the_test_ca_as_the_system_s = ["unshare", "--mount", "sh", "-c", 'mount --bind "$1" "$2" && shift 2 && exec "$@"',
                                        "sh", str(nginx.pki / "ca.pem"), system_bundle]
    succeeded(use_without_cas(SSL_CERT_FILE=home / "stale.pem", prefix=with_the_test_ca_as_the_system_s))


@pytest.mark.parametrize("ca_bundle", ["a file", "a directory", "empty"])
def test_an_untrusted_certificate_names_the_ca_bundle_setting_in_force_and_where_it_is_set(
        nginx: CredentialServers, home: Path, ca_bundle: str) -> None:
    # With ca_bundle set, SSL_CERT_FILE is not read, yet the line said to give the CA with
    # SSL_CERT_FILE: a user who did so got the same failure, told nothing of the setting.
    config, url, no_cas = home / "site.config", nginx.url("/public/data.tgz"), home / "no-cas"
    no_cas.mkdir()
    value = {"a file": nginx.pki / "other-ca.pem", "a directory": no_cas, "empty": ""}[ca_bundle]
    config.write_text(f"# the site's CAs\nca_bundle = {value}\n")
    line = failed(use(home, url, SC_CONFIG=config, SSL_CERT_FILE=nginx.pki / "ca.pem"),
                  f"cannot download {url}: untrusted server certificate (")
    assert line.endswith(f"): give its CA with the ca_bundle setting ({config}:2)"), line


def test_a_fetch_policy_without_credentials_trusts_no_ca_that_a_variable_names(
        nginx: CredentialServers, home: Path) -> None:
    # FetchPolicy(credentials=None), documented as the system's CAs, left the TLS context to
    # urllib3, whose default loads what SSL_CERT_FILE and SSL_CERT_DIR name: a program that gave
    # no credentials trusted a CA they named, where Credentials() (and "ca_bundle =") does not.
    # The line says where such a program gives its CA, with its own Credentials too.
    url, ca = nginx.url("/public/data.tgz"), nginx.pki / "ca.pem"
    advice = "): give its CA with FetchPolicy(credentials=Credentials(ca_file=...))"
    for result in (use_from_python(home, url, SSL_CERT_FILE=ca, SSL_CERT_DIR=nginx.ca_dir),
                   use_from_python(home, url, nginx.pki / "other-ca.pem", SSL_CERT_FILE=ca)):
        line = failed(result, f"cannot download {url}: untrusted server certificate (")
        assert line.endswith(advice), line
    succeeded(use_from_python(home, url, ca))


@pytest.mark.parametrize("key", ["netrc", "bearer_token_file", "ca_bundle"])
def test_a_config_file_naming_a_credential_file_with_a_nul_byte_is_one_line(origin, home: Path, key: str) -> None:
    # No system call takes such a name (Python raises for it): the line is refused, as a value of
    # the wrong kind is, where it was an internal error (a .netrc was read with no error before).
    config = home / "site.config"
    config.write_bytes(f"{key} = {home}/cred\0ential\n".encode())
    failed(use(home, origin.add("/data.tgz", DATA), SC_CONFIG=config),
           f"{config}:1: {key} cannot name a file: it holds a NUL byte", status=2)


def test_a_stale_ca_variable_fails_a_plain_http_url_redirected_to_https_in_one_line(
        nginx: CredentialServers, home: Path) -> None:
    # A plain-HTTP download checks no CA variable up front (a stale one fails no plain-HTTP
    # download), but a redirect to HTTPS trusted the system's CAs instead of the CAs it names,
    # ending in an untrusted certificate that blamed no variable.
    url = f"http://127.0.0.1:{nginx.redirect_port}/public/data.tgz"
    (home / "file").write_text("")
    missing = "No such file or directory"
    for variable, path, why in [("SSL_CERT_FILE", home / "missing.pem", missing),
                                ("CURL_CA_BUNDLE", home / "missing.pem", missing),
                                ("SSL_CERT_DIR", home / "missing", missing),
                                ("SSL_CERT_DIR", home / "file", "it is not a directory")]:
        base = home / "cache"
        base.mkdir()
        failed(use(home, url, base=base, **{variable: path}), f": {variable}: cannot use {path}: {why}",
               status=2)
        assert [entry.name for entry in base.iterdir() if not entry.name.startswith(".")] == [], variable
        shutil.rmtree(base)
    # A stale client certificate still fails no plain-HTTP download: the hop to HTTPS goes
    # without it, trusting the CAs the variables name.
    succeeded(use(home, url, SSL_CERT_FILE=nginx.pki / "ca.pem", X509_USER_PROXY=home / "expired-and-gone"))
