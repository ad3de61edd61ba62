"""Network inputs that must never show a secret or meet an internal error: proxies, bearer
tokens, client keys, timeouts and rewrite mirrors; and offline with a local mirror."""

from __future__ import annotations

import base64
import hashlib
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from scutil import Sleeper, control, sc, sc_env, user_dir
from squid import free_port

from sharedcache.config.settings import proxy_chain
from sharedcache.errors import SettingError

DATA = b"local mirror bytes\n" * 1000
SHA256 = hashlib.sha256(DATA).hexdigest()


@pytest.fixture
def owner() -> Iterator[Sleeper]:
    with Sleeper() as sleeper:
        yield sleeper


def stored(base: Path) -> str:
    """Everything the user's cache holds as text (records, metadata, the index)."""
    return "".join(path.read_bytes().decode("latin-1") for path in control(base).rglob("*") if path.is_file())


@pytest.mark.parametrize("proxy", ["http://alice:s3cret-word@proxy.site:99999", "alice:s3cret-word@proxy.site:0",
                                   "ftp://alice:s3cret-word@proxy.site:21",
                                   "http://alice:s3cret-word@[::1", "http://alice:s3cret/word@proxy.site:3128"])
def test_the_password_of_a_proxy_no_connection_can_use_is_never_shown_or_stored(tmp_path, owner, proxy):
    url = f"http:http://127.0.0.1:{free_port()}/data"
    config = tmp_path / "config"
    config.write_text(f"proxy = {proxy}\n")
    for args, env in [(["--proxy", proxy], sc_env()), ([], sc_env(SC_PROXY=proxy)),
                      ([], sc_env(SC_CONFIG=str(config))), ([], sc_env(http_proxy=proxy))]:
        result = sc("--use", "-d", str(tmp_path), "-n", "data", "--pid", str(owner.pid), *args, url, env=env)
        assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
        assert "proxy" in result.stderr and "s3cret" not in result.stderr, result.stderr
        shown = sc("config", env=env)
        assert "s3cret" not in shown.stdout + shown.stderr
    assert "s3cret" not in stored(tmp_path)


@pytest.mark.parametrize("password", ["pa#s3cret", "12#s3cret", "s3cret pa", "12 s3cret", "p/s3cret", "p?s3cret"])
def test_a_password_written_with_a_hash_space_slash_or_question_mark_is_never_shown(tmp_path, owner, password):
    # As users write them, unescaped: a URL parser ends the host at "#", "/" or "?", and a space
    # splits the recipe's word; what follows them is never shown or stored, bare URL or not.
    # (What comes before, if digits, is a port as far as anyone can tell: "http://alice:12/x@h" is
    # the path /x@h of the host alice.)
    url = f"http://alice:{password}@127.0.0.1:{free_port()}/data"
    for words in ([f"http:{url}"], [url]):
        result = sc("--use", "-v", "-d", str(tmp_path), "-n", "data", "--pid", str(owner.pid), *words, timeout=30)
        assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
        assert "s3cret" not in result.stderr, result.stderr
    assert "s3cret" not in stored(tmp_path)


def test_a_backslash_in_the_host_of_a_url_is_refused(tmp_path, owner):
    # urlsplit takes "127.0.0.1\.good.example" for the host, urllib3 connects to 127.0.0.1 and
    # sends it the login: the host shown was not where the credentials went.
    url = "http://alice:s3cret@127.0.0.1\\.good.example/data"
    result = sc("--use", "-d", str(tmp_path), "-n", "data", "--pid", str(owner.pid), f"http:{url}", timeout=30)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "a '\\' in the host of a URL" in result.stderr and "s3cret" not in result.stderr, result.stderr


@pytest.mark.parametrize(("proxy", "shown"), [("http://alice:12/S3CRET@proxy.example:3128", "http://..."),
                                               ("alice:12/S3CRET@proxy.example:3128", "..."),
                                               ("https://alice:12?S3CRET@proxy.example:3128", "https://...")])
def test_a_proxy_password_with_a_slash_after_digits_is_refused_showing_only_the_scheme(tmp_path, owner, proxy, shown):
    # URL parsers read "alice:12/S3CRET@proxy.example:3128" as the host alice, port 12 and a path,
    # which showed the password and connected to the user name; a proxy has no path, so that "@"
    # ends a password.  Before the "/", a user name and the password's first characters; after it,
    # the rest of the password: nothing past the scheme is shown.
    url = f"http:http://127.0.0.1:{free_port()}/data"
    config = tmp_path / "config"
    config.write_text(f"proxy = {proxy}\n")
    reason = (f"proxy cannot use {shown!r} (a proxy URL has no path, so an '@' after its host ends a user name "
              "or password, where a '/' is written %2F and a '?' %3F): expected DIRECT or [SCHEME://]HOST[:PORT] (SCHEME: http, https, socks5h, socks5, socks4a, socks4), "
              "groups separated by ';' and proxies inside a group by '|'")
    for args, variables, line in [
        (["--proxy", proxy], {}, f"--{reason} (see 'sc --help')"),
        ([], {"SC_PROXY": proxy}, f"SC_PROXY: {reason}"),
        ([], {"SC_CONFIG": str(config)}, f"{config}:1: {reason}"),
        ([], {"http_proxy": proxy}, f"http_proxy: {reason}"),
        ([], {"all_proxy": proxy}, f"all_proxy: {reason}"),
    ]:
        for command in (["--use", "-d", str(tmp_path), "-n", "data", "--pid", str(owner.pid), *args, url],
                        ["config", *args]):
            result = sc(*command, env=sc_env(**variables))
            assert (result.returncode, result.stderr) == (2, f"sc: error: {line}\n"), result.stderr
            assert "S3CRET" not in result.stdout + result.stderr, result.stdout
    shown_config = sc("config", env=sc_env(https_proxy=proxy))
    assert (shown_config.returncode, shown_config.stderr) == (2, f"sc: error: https_proxy: {reason}\n")
    assert "S3CRET" not in shown_config.stdout + stored(tmp_path)


@pytest.mark.parametrize("proxy", ["http://proxy.site:3128/", "alice:s3cret@proxy.site:3128/"])
def test_a_proxy_written_with_a_slash_after_its_port_is_taken(proxy):
    # (And left out, as curl leaves it out: a proxy has no use for a path.)
    assert proxy_chain(proxy) == ((f"http://{proxy.removeprefix('http://').removesuffix('/')}",),)


def test_a_proxy_s_scheme_is_read_in_any_case():
    # HTTP_PROXY=HTTP://proxy:3128 was refused; curl takes it.
    assert proxy_chain("HTTP://proxy.site:3128|Https://proxy.site:3129") == (
        ("http://proxy.site:3128", "https://proxy.site:3129"),)


@pytest.mark.parametrize("proxy", ["http://alice:12#pw@proxy.site:3128", "alice:12#pw@proxy.site:3128"])
def test_a_proxy_password_with_a_hash_after_digits_is_refused(proxy):
    # It was taken: curl reads "alice:12" as host and port (and connects to the user name), where
    # urllib3 sent the whole password to proxy.site; a "#" in a download URL's password is refused.
    with pytest.raises(SettingError, match=r"cannot use '(http://)?proxy\.site:3128' \(a '/', '\?' or '#' in the user "
                                           r"name or password of a URL is written %2F, %3F or %23\)") as refused:
        proxy_chain(proxy)
    assert "pw" not in str(refused.value).replace("password", "")
    assert proxy_chain("http://alice:12%23pw@proxy.site:3128") == (("http://alice:12%23pw@proxy.site:3128",),)


def test_a_refused_proxy_with_an_at_sign_in_its_path_shows_no_part_of_a_password():
    with pytest.raises(SettingError, match=r"proxy cannot use 'http://\.\.\.' \(a proxy URL has no path"):
        proxy_chain("http://alice:s3cret@proxy.site:0/a@b")


def test_offline_a_local_mirror_still_populates(tmp_path, owner, origin):
    """README: "`file:` recipes still populate", and mirrors are tried in order, local ones first."""
    url = origin.add("/data", DATA)
    local = tmp_path / "data"
    local.write_bytes(DATA)
    for n, sources in enumerate([[f"file:{local}", f"http:{url}"], [f"http:{url}", f"file:{local}"]]):
        result = sc("--use", "--offline", "-d", str(tmp_path), "-n", f"data{n}", "--pid", str(owner.pid),
                    *sources, f"sha256:{SHA256}")
        assert result.returncode == 0, result.stderr
        assert (user_dir(tmp_path) / f"data{n}" / "data").read_bytes() == DATA
    assert origin.stats("/data").gets == 0, "offline, nothing connects"
    missing = sc("--use", "--offline", "-d", str(tmp_path), "-n", "missing", "--pid", str(owner.pid), f"http:{url}")
    assert missing.returncode == 1 and missing.stderr == (
        f"sc: error: offline: repository 'missing' is not here, and {url} needs the network\n")


def test_a_proxy_host_that_is_not_ascii_is_one_line_not_an_internal_error(tmp_path, owner):
    url = f"http:http://127.0.0.1:{free_port()}/data"
    for env in (sc_env(SC_PROXY="http://pr\u00f6xy.site:3128"), sc_env(http_proxy="http://pr\u00f6xy.site:3128")):
        result = sc("--use", "-d", str(tmp_path), "-n", "data", "--pid", str(owner.pid), url, env=env)
        assert result.returncode == 2 and "internal error" not in result.stderr, result.stderr
        assert "proxy cannot use 'http://pr\u00f6xy.site:3128'" in result.stderr


@pytest.mark.parametrize("host", ["a..b", f"{'x' * 64}.example"])
def test_a_host_name_idna_cannot_encode_is_one_line_and_not_retried(tmp_path, owner, host):
    # The resolver's thread died of getaddrinfo's UnicodeError, printing its traceback, and the
    # download was retried as one whose resolver had given no answer.
    url = f"http:http://{host}/data"
    for env, args in ((sc_env(), (url,)),
                      (sc_env(SC_PROXY=f"http://{host}:3128"), (f"http:http://origin.invalid:{free_port()}/data",))):
        result = sc("--use", "-d", str(tmp_path), "-n", "data", "--pid", str(owner.pid), *args, env=env)
        assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
        assert result.stderr.endswith(f"'{host}', label empty or too long\n"), result.stderr


@pytest.mark.parametrize("host", ["127.0.0.1\\x", "[::1]x", "%00x", "[v1.x]"])
def test_a_proxy_host_urllib3_reads_otherwise_is_refused_before_anything_connects(tmp_path, owner, host):
    # Python's parser and messages took "127.0.0.1\x" for the host, and urllib3 connected to
    # 127.0.0.1, port 80, with the password; the other hosts were a traceback once connected to.
    # (curl refuses them all: "Unsupported proxy syntax".)
    proxy = f"http://alice:S3CRET@{host}:{free_port()}"
    url = f"http:http://127.0.0.1:{free_port()}/data"
    config = tmp_path / "config"
    config.write_text("retries = 0\n")
    for variables in ({"SC_PROXY": proxy}, {"http_proxy": proxy}):
        env = sc_env(SC_CONFIG=str(config), **variables)
        for args in (("--use", "-d", str(tmp_path), "-n", "data", "--pid", str(owner.pid), url), ("config",)):
            result = sc(*args, env=env, timeout=60)
            assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
            assert result.stderr.startswith("sc: error: ") and "proxy cannot use '" in result.stderr, result.stderr
            assert "S3CRET" not in result.stderr + result.stdout


@pytest.mark.parametrize("mirror", ["http://[::1/", "http://mirror.site:99999/"])
def test_a_rewrite_mirror_no_connection_can_use_is_refused_naming_the_config_line(tmp_path, owner, mirror):
    config = tmp_path / "config"
    config.write_text(f"rewrite = http://origin.site/ = {mirror}\n")
    result = sc("--use", "-d", str(tmp_path), "-n", "data", "--pid", str(owner.pid), "http:http://origin.site/data",
                env=sc_env(SC_CONFIG=str(config)))
    assert result.returncode == 2 and result.stderr.startswith(f"sc: error: {config}:1: rewrite "), result.stderr


@pytest.mark.parametrize("mirror", ["ftp://mirror.site/", "FTP://bob:S3CRET@mirror.site/", "file://localhost/srv/",
                                    "socks5h://mirror.site:1080/"])
def test_a_rewrite_mirror_that_is_not_http_is_refused_by_sc_config_and_a_miss(tmp_path, owner, mirror):
    # sc config took it, and every miss the rule matched failed as a malformed recipe, the user's
    # word blamed (exit 2, no file named), the origin kept as the last resort never tried.
    config = tmp_path / "config"
    config.write_text(f"rewrite = http://origin.site/ = {mirror} http://origin.site/\n")
    env = sc_env(SC_CONFIG=str(config))
    expected = (f"sc: error: {config}:1: rewrite http://origin.site/: the mirror "
                f"{mirror.replace('bob:S3CRET@', '')!r} is not an http:// or https:// URL\n")
    for args in (("config",), ("--use", "-d", str(tmp_path), "-n", "data", "--pid", str(owner.pid),
                               "http:http://origin.site/data")):
        result = sc(*args, env=env)
        assert (result.returncode, result.stdout, result.stderr) == (2, "", expected)


@pytest.mark.parametrize("rules", [
    "https://github.com/ http://alice:S3CRET@mirror.site/github/",  # its "=" forgotten
    "https://github.com/ http://alice:S3CRET=@mirror.site/github/",  # and a "=" in the password
    "https://alice:S3CRET@data.cern.ch/ =",
    "https://alice:S3CRET@data.cern.ch/ x = http://mirror.site/",
    "https://alice:S3CRET@data.cern.ch/ = mirror.site/",
])
def test_a_bad_rewrite_rule_is_refused_without_a_password_of_its_urls(tmp_path, owner, rules):
    # The line refusing a rule quoted its prefix, or the rule, as written: passwords and all.
    config = tmp_path / "config"
    config.write_text(f"rewrite = {rules}\n")
    env = sc_env(SC_CONFIG=str(config))
    for args in (("config",), ("--use", "-d", str(tmp_path), "-n", "data", "--pid", str(owner.pid),
                               "http:https://data.cern.ch/data")):
        result = sc(*args, env=env)
        assert (result.returncode, result.stdout) == (2, ""), result.stderr
        assert result.stderr.startswith(f"sc: error: {config}:1: rewrite ") and result.stderr.count("\n") == 1, \
            result.stderr
        assert "S3CRET" not in result.stderr and "alice" not in result.stderr, result.stderr


@pytest.mark.parametrize(("text", "line", "expected"), [
    ("proxy: http://alice:S3CRET@squid.site:3128\n", 1, "expected 'key = value', but no '=' follows 'proxy'"),
    ("proxy http://alice:S3CRET=@squid.site:3128\n", 1, "expected 'key = value', but no '=' follows 'proxy'"),
    # The second line of a proxy chain or of rules, wrapped as a shell line would be.
    ("proxy = http://alice:S3CRET@squid1.site:3128|\n    http://alice:S3CRET@squid2.site:3128\n", 2,
     "expected 'key = value', not 'http://squid2.site:3128'"),
    ("proxy = DIRECT;\n  alice:S3CRET@squid2.site:3128 | http://alice:12/S3CRET@squid3.site:3128\n", 2,
     "expected 'key = value', not '... | http://...'"),
    ("rewrite = https://github.com/ =\n  http://alice:pa S3CRET@mirror.site/gh/\n", 2,
     "expected 'key = value', not 'http://... ...'"),
    ("https://alice:S3CRET@data.cern.ch/ = http://mirror.site/\n", 1, "unknown key 'https://data.cern.ch' (known: "),
])
def test_a_config_line_that_sets_nothing_is_named_without_a_password(tmp_path, text, line, expected):
    # Such a line was quoted whole by every command, a use of ready data too: a proxy's password
    # in the site file went to the log of every job.
    config = tmp_path / "config"
    config.write_text(text)
    for command in (["--location", "-d", str(tmp_path), "-n", "data", "file:/nonexistent"], ["config"]):
        result = sc(*command, env=sc_env(SC_CONFIG=str(config)))
        assert (result.returncode, result.stdout, result.stderr.count("\n")) == (2, "", 1), result.stderr
        assert result.stderr.startswith(f"sc: error: {config}:{line}: {expected}"), result.stderr
        assert "S3CRET" not in result.stderr and "alice" not in result.stderr, result.stderr


def test_a_bearer_token_a_header_cannot_carry_is_refused_at_once(tmp_path, owner):
    url = f"http:https://127.0.0.1:{free_port()}/data"
    result = sc("--use", "-d", str(tmp_path), "-n", "data", "--pid", str(owner.pid), url,
                env=sc_env(BEARER_TOKEN="tok\u20acn"), timeout=20)
    assert result.returncode == 2 and result.stderr == (
        "sc: error: BEARER_TOKEN: must be one word of printable ASCII characters\n"), result.stderr


class _RecordingProxy:
    """A forward proxy for plain HTTP that answers every GET itself, with ``DATA`` (a 404 for a
    URL whose path ends in ``/missing``), and records the ``Proxy-Authorization`` it was sent
    (``seen``) and the request line (``requested``)."""

    def __init__(self) -> None:
        import http.server
        import threading

        seen: list[str | None] = []
        requested: list[str] = []
        self.seen, self.requested = seen, requested

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                seen.append(self.headers.get("Proxy-Authorization"))
                requested.append(self.requestline)
                if self.path.endswith("/missing"):
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(DATA)))
                self.end_headers()
                self.wfile.write(DATA)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.address = f"127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_proxy_password_outside_latin_1_is_sent_as_utf_8(tmp_path, owner):
    proxy = _RecordingProxy()
    try:
        result = sc("--use", "-d", str(tmp_path), "-n", "data", "--pid", str(owner.pid),
                    "--proxy", f"http://alice:p%E2%82%ACss@{proxy.address}",
                    f"http:http://origin.invalid:{free_port()}/data", f"sha256:{SHA256}")
    finally:
        proxy.stop()
    assert result.returncode == 0 and "internal error" not in result.stderr, result.stderr
    assert proxy.seen == ["Basic " + base64.b64encode("alice:p\u20acss".encode()).decode()]


@pytest.fixture
def recording_proxy() -> Iterator[_RecordingProxy]:
    proxy = _RecordingProxy()
    try:
        yield proxy
    finally:
        proxy.stop()


@pytest.mark.parametrize("written", ["http://alice:pw@{address}?x=S3CRET", "alice:pw@{address}?x=S3CRET",
                                     "http://alice:pw@{address}/?x=S3CRET", "http://alice:pw@{address}#S3CRET"])
def test_a_proxy_with_a_query_or_fragment_is_taken_as_curl_takes_it(tmp_path, owner, recording_proxy, written):
    # It was refused ("proxy:3128?x=1" is no port), where curl connects to the proxy's host and
    # port and sends the query nowhere, neither in the request line nor in any header; so do we.
    proxy = written.format(address=recording_proxy.address)
    origin = f"http://origin.invalid:{free_port()}/data"
    config = tmp_path / "config"
    config.write_text(f"proxy = {proxy}\n")
    sources = [(["--proxy", proxy], {}), ([], {"SC_PROXY": proxy}), ([], {"SC_CONFIG": str(config)}),
               ([], {"all_proxy": proxy})]
    for n, (args, variables) in enumerate(sources):
        result = sc("--use", "-v", "-d", str(tmp_path), "-n", f"data{n}", "--pid", str(owner.pid), *args,
                    f"http:{origin}", f"sha256:{SHA256}", env=sc_env(**variables))
        assert result.returncode == 0, result.stderr
        assert (user_dir(tmp_path) / f"data{n}" / "data").read_bytes() == DATA
        shown = sc("config", *args, env=sc_env(**variables))
        assert shown.returncode == 0, shown.stderr
        assert f"proxy = http://{recording_proxy.address}  # " in shown.stdout, shown.stdout
        assert "S3CRET" not in result.stderr + shown.stdout
    assert recording_proxy.requested == [f"GET {origin} HTTP/1.1"] * len(sources)
    assert recording_proxy.seen == ["Basic " + base64.b64encode(b"alice:pw").decode()] * len(sources)


def test_an_internationalized_host_name_is_asked_for_in_its_ascii_form(tmp_path, owner, recording_proxy):
    # "Unable to parse URL without the 'idna' module": the HTTP client converts such a name only
    # with that package, which was not installed. Through a proxy, which sees the name as sent.
    origin = "http://b\u00fccher.example/data"
    result = sc("--use", "-d", str(tmp_path), "-n", "data", "--pid", str(owner.pid),
                "--proxy", f"http://{recording_proxy.address}", f"http:{origin}", f"sha256:{SHA256}")
    assert result.returncode == 0, result.stderr
    assert (user_dir(tmp_path) / "data" / "data").read_bytes() == DATA
    assert recording_proxy.requested == ["GET http://xn--bcher-kva.example/data HTTP/1.1"]


@pytest.mark.parametrize(("host", "no_proxy"), [("b\u00fccher.example", "a..b\u00fc, xn--bcher-kva.example"),
                                                ("www.xn--bcher-kva.example", ".B\u00dcCHER.example")])
def test_no_proxy_names_an_internationalized_host_in_either_form(tmp_path, owner, recording_proxy, host, no_proxy):
    # The URL's host, which urlsplit gives as written, was compared with the entries as written:
    # an entry copied from DNS or a proxy's log (xn--) did not name the Unicode host, which went
    # to the proxy.  Reached directly, the name resolves nowhere: the proxy must see nothing.
    config = tmp_path / "config"
    config.write_text("retries = 0\n")
    result = sc("--use", "-d", str(tmp_path), "-n", "data", "--pid", str(owner.pid),
                "--proxy", f"http://{recording_proxy.address}", f"http:http://{host}/data", f"sha256:{SHA256}",
                env=sc_env(SC_CONFIG=str(config), no_proxy=no_proxy))
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert f"cannot download http://{host}/data: Failed to resolve " in result.stderr, result.stderr
    assert recording_proxy.requested == []


def test_a_no_proxy_entry_idna_cannot_encode_names_no_host(tmp_path, owner, recording_proxy):
    # Skipped, as urllib3 would refuse to send that name: neither matched nor an internal error.
    no_proxy = "a..b\u00fc, b\u00fc_cher.example, " + "\u00fc" * 64 + ".example"
    result = sc("--use", "-d", str(tmp_path), "-n", "data", "--pid", str(owner.pid),
                "--proxy", f"http://{recording_proxy.address}", "http:http://b\u00fccher.example/data",
                f"sha256:{SHA256}", env=sc_env(no_proxy=no_proxy))
    assert result.returncode == 0, result.stderr
    assert recording_proxy.requested == ["GET http://xn--bcher-kva.example/data HTTP/1.1"]


def test_no_proxy_imports_idna_only_for_a_name_outside_ascii():
    # Its import is the cost of a name outside ASCII only.
    code = ("import sys\n"
            "from sharedcache.loaders.transport import bypassed\n"
            "assert bypassed('h.example.org', 'a.example, 10.0.0.0/8, example.org')\n"
            "assert 'idna' not in sys.modules\n"
            "assert bypassed('b\u00fccher.example', 'xn--bcher-kva.example')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=sc_env(), timeout=60)
    assert result.returncode == 0, result.stderr


def test_a_proxy_is_shown_by_its_scheme_host_and_port_alone(tmp_path, owner, recording_proxy):
    # "http://alice:12/S3CRET" is a password with a "/" whose "@host" was lost: to any URL parser
    # the host alice, port 12 and a path, which a proxy has no use for.  It was shown whole by
    # sc config, -v and the error lines of what went through it.
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there: a connection error, and a fail-over
    chain = f"http://{dead}/S3CRET-1;http://{recording_proxy.address}/S3CRET-2"
    missing = f"http://origin.invalid:{free_port()}/missing"
    result = sc("--use", "-v", "-d", str(tmp_path), "-n", "data", "--pid", str(owner.pid),
                "--proxy", chain, f"http:{missing}")
    assert result.returncode == 1, result.stderr
    assert f"proxy http://{dead} failed for {missing} (" in result.stderr, result.stderr
    assert f"failing over to proxy http://{recording_proxy.address}\n" in result.stderr, result.stderr
    assert result.stderr.endswith(f"HTTP 404 Not Found for {missing} via proxy http://{recording_proxy.address}\n"), \
        result.stderr
    assert recording_proxy.requested == [f"GET {missing} HTTP/1.1"]
    for variables, line in [({"SC_PROXY": "http://alice:12/S3CRET|DIRECT"}, "http://alice:12|DIRECT  # SC_PROXY"),
                            ({"SC_PROXY": "alice:12/S3CRET"}, "http://alice:12  # SC_PROXY"),
                            ({"http_proxy": "alice:12/S3CRET", "https_proxy": "https://bob:7?S3CRET"},
                             "http://alice:12 for http://, https://bob:7 for https://  # http_proxy, https_proxy")]:
        shown = sc("config", env=sc_env(**variables))
        assert shown.returncode == 0, shown.stderr
        assert f"\nproxy = {line}\n" in shown.stdout, shown.stdout
        assert "S3CRET" not in shown.stdout


@pytest.mark.parametrize("variable", ["SC_PROXY", "SC_CONFIG", "http_proxy", "https_proxy", "all_proxy"])
def test_sc_config_that_fails_prints_no_row(tmp_path, variable):
    # The rows above the proxy were printed before curl's variables were read and one refused.
    proxy = "http://alice:1/S3CRET@proxy.site:3128"
    config = tmp_path / "config"
    config.write_text(f"proxy = {proxy}\n")
    shown = sc("config", env=sc_env(**{variable: str(config) if variable == "SC_CONFIG" else proxy}))
    assert (shown.returncode, shown.stdout) == (2, "")
    assert shown.stderr.startswith("sc: error: ") and shown.stderr.count("\n") == 1, shown.stderr


@pytest.mark.parametrize("chain", [[["ftp://x"]], [["http://alice:12/S3CRET@proxy.site:3128"]], [[""]], [[]], [],
                                   [["http://proxy.site:3128", "ftp://alice:S3CRET@proxy.site:21"], ["DIRECT"]]])
def test_a_fetch_policy_s_proxy_groups_are_checked_as_the_settings_are(chain):
    # FetchPolicy(proxy=...) checked a chain written as text, and took its groups as they were.
    from sharedcache.config.settings import FetchPolicy

    written = ";".join("|".join(group) for group in chain)
    with pytest.raises(SettingError) as as_text:
        FetchPolicy(proxy=written)
    for given in (chain, tuple(tuple(group) for group in chain)):
        with pytest.raises(SettingError) as as_groups:
            FetchPolicy(proxy=given)
        assert str(as_groups.value) == str(as_text.value) and "S3CRET" not in str(as_groups.value)


@pytest.mark.parametrize("hosts", [42, ["a.example"], b"a.example"])
def test_a_fetch_policy_s_no_proxy_must_be_text(hosts):
    # It was taken, and a download through the policy was an internal error (AttributeError).
    from sharedcache.config.settings import FetchPolicy

    with pytest.raises(SettingError, match="^no_proxy must be text, hosts separated by commas, not "):
        FetchPolicy(no_proxy=hosts)
    assert FetchPolicy(no_proxy="a.example, .b.example").no_proxy == "a.example, .b.example"


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"rewrites": "https://a.example/ = https://m.example/"}, "rewrites must be Rewrite rules, as rewrite_rules"),
    ({"rewrites": [("https://a.example/", "https://m.example/")]}, "rewrites must be Rewrite rules, as rewrite_rules"),
    ({"credentials": "alice:pw"}, "credentials must be a Credentials or None, not str"),
    ({"rewrites": 5}, "rewrites must be Rewrite rules, as rewrite_rules"),
])
def test_a_fetch_policy_s_rules_and_credentials_are_checked(kwargs, message):
    # A str of rules became a tuple of characters, and credentials of another type failed at the
    # first download.
    from sharedcache.config.settings import FetchPolicy, rewrite_rules

    with pytest.raises(SettingError, match=f"^{re.escape(message)}"):
        FetchPolicy(**kwargs)
    rules = rewrite_rules("https://a.example/ = https://m.example/")
    assert FetchPolicy(rewrites=list(rules)).rewrites == rules
    # An iterator of rules was walked by the check, which left the policy none.
    assert FetchPolicy(rewrites=iter(rules)).rewrites == rules


@pytest.mark.parametrize(("made_by", "kwargs", "message"), [
    ("Credentials", {"bearer_token": 1}, "bearer_token must be text, not int"),
    ("Credentials", {"token_from": 1}, "token_from must be text, not int"),
    ("Credentials", {"ca_file": 123}, "ca_file must be a path (text or an os.PathLike), not int"),
    ("Credentials", {"ca_dir": ["/etc/ssl/certs"]},
     "ca_dir must be paths separated by ':' (text or an os.PathLike), not list"),
    ("Credentials", {"netrc": b"/home/u/.netrc"}, "netrc must be a path (text or an os.PathLike), not bytes"),
    ("Credentials", {"variables": [("SSL_CERT_FILE", 5)]},
     "SSL_CERT_FILE must be a path (text or an os.PathLike), not int"),
    ("Credentials", {"variables": "SSL_CERT_FILE=/x"}, "variables must be pairs of a variable's name and its path"),
    ("Credentials.discover", {"ca_bundle": 2}, "ca_bundle must be a path (text or an os.PathLike), not int"),
])
def test_credentials_of_the_wrong_kind_are_refused_naming_the_field(tmp_path, made_by, kwargs, message):
    # Taken as they were, where FetchPolicy's are refused, they ended the constructor in an
    # AttributeError, or each download in an internal error (a TypeError) recorded as the
    # population's failure; Credentials.discover(ca_bundle=2) took 2 for a file descriptor.
    from sharedcache.config.settings import Credentials

    make = Credentials.discover if made_by == "Credentials.discover" else Credentials
    with pytest.raises(SettingError, match=f"^{re.escape(message)}$"):
        make(**kwargs)
    # A path is text or any os.PathLike.
    assert (Credentials(ca_dir=tmp_path).ca_dir, Credentials.discover({}, ca_bundle=tmp_path).ca_dir) == (
        str(tmp_path), str(tmp_path))


def test_a_fetch_policy_s_repr_shows_no_password():
    # A program may log its policy: the proxies' and the mirrors' passwords were in its repr.
    from sharedcache.config.settings import FetchPolicy, rewrite_rules

    policy = FetchPolicy(proxy="http://alice:S3CRET@proxy.site:3128|DIRECT",
                         rewrites=rewrite_rules("https://bob:T0KEN@a.example/ = https://carol:PASSW0RD@m.example/"))
    shown = repr(policy)
    assert "proxy=(('http://proxy.site:3128', 'DIRECT'),)" in shown, shown
    assert "Rewrite('https://a.example/', ('https://m.example/',))" in shown, shown
    assert not any(secret in shown for secret in ("S3CRET", "T0KEN", "PASSW0RD", "alice", "bob", "carol"))


def test_a_fetch_policy_s_proxy_groups_are_those_of_the_text():
    from sharedcache.config.settings import FetchPolicy

    text = "HTTP://alice:pw@proxy.site:3128/|proxy.site:3129?x=1;DIRECT"
    assert FetchPolicy(proxy=[["HTTP://alice:pw@proxy.site:3128/", "proxy.site:3129?x=1"], ["DIRECT"]]) \
        == FetchPolicy(proxy=text)
    assert FetchPolicy(proxy=text).proxy == (("http://alice:pw@proxy.site:3128", "http://proxy.site:3129"), ("DIRECT",))
    for wrong in (42, ["http://alice:S3CRET@proxy.site:3128"], [[b"http://alice:S3CRET@proxy.site:3128"]]):
        with pytest.raises(SettingError, match="^proxy ") as refused:
            FetchPolicy(proxy=wrong)  # type: ignore[arg-type]
        assert "S3CRET" not in str(refused.value)


@pytest.mark.parametrize("key", ["connect_timeout", "read_timeout"])
def test_a_connect_or_read_timeout_of_0_is_one_line_naming_the_file(tmp_path, owner, key):
    config = tmp_path / "config"
    config.write_text(f"{key} = 0\n")
    result = sc("--use", "-d", str(tmp_path), "-n", "data", "--pid", str(owner.pid),
                f"http:http://127.0.0.1:{free_port()}/data", env=sc_env(SC_CONFIG=str(config)))
    assert result.returncode == 2 and result.stderr == (
        f"sc: error: {config}:1: {key} must be a number of seconds more than 0, not 0.0\n"), result.stderr


@pytest.fixture
def encrypted_client_key(tmp_path: Path) -> tuple[Path, Path]:
    import shutil
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed (tools/test.sh installs it when run as root)")
    cert, key = tmp_path / "client.pem", tmp_path / "client.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-keyout", str(key), "-out", str(cert),
                    "-days", "2", "-subj", "/CN=client", "-passout", "pass:secret"],
                   check=True, capture_output=True, timeout=60)
    return cert, key


def test_an_encrypted_client_key_is_one_line_and_never_a_passphrase_prompt(tmp_path, owner, encrypted_client_key):
    import shutil
    import subprocess
    import sys

    cert, key = encrypted_client_key
    config = tmp_path / "config"
    config.write_text(f"client_cert = {cert}\nclient_key = {key}\n")
    url = f"http:https://127.0.0.1:{free_port()}/data"
    args = ["--use", "-d", str(tmp_path), "-n", "data", "--pid", str(owner.pid), url]
    expected = (f"sc: error: repository 'data': cannot use the client certificate {cert}: its key {key} is "
                "encrypted, and sc cannot ask for its passphrase")
    # A batch job: no terminal.  OpenSSL printed its prompt twice, then "Invalid argument".
    batch = sc(*args, env=sc_env(SC_CONFIG=str(config)), stdin=subprocess.DEVNULL, start_new_session=True)
    assert batch.returncode == 1 and batch.stderr == expected + "\n", batch.stderr
    # On a terminal OpenSSL asked for the passphrase there, and the population waited for good.
    if shutil.which("script") is None:
        pytest.skip("script (util-linux) is not installed: no terminal to run sc on")
    import shlex

    command = " ".join(shlex.quote(arg) for arg in [sys.executable, "-m", "sharedcache", *args])
    on_terminal = subprocess.run(["script", "-qec", command, "/dev/null"], capture_output=True, text=True, timeout=30,
                                 stdin=subprocess.DEVNULL, env=sc_env(SC_CONFIG=str(config)))
    assert on_terminal.returncode == 1 and expected in on_terminal.stdout, on_terminal.stdout
    assert "pass phrase" not in on_terminal.stdout


@pytest.mark.parametrize(("rules", "shown_rules", "secrets"), [
    ("http://origin.site/a@b/ = http://bob:s3cret-word@mirror.site/x@y/;http://o2.site/=https://al:pw-word@m2.site/",
     "http://origin.site/a@b/ = http://mirror.site/x@y/;http://o2.site/=https://m2.site/", ("s3cret", "pw-word")),
    # A base64 token ends with "=": only a rule's first "=" ends its prefix.
    ("http://origin.site/ = http://bob:czNjcmV0==@mirror.site/x/;http://o2.site/=https://al:cHc=@m2.site/",
     "http://origin.site/ = http://mirror.site/x/;http://o2.site/=https://m2.site/", ("czNjcmV0", "cHc")),
])
def test_sc_config_shows_no_password_of_a_rewrite_mirror(tmp_path, rules, shown_rules, secrets):
    config = tmp_path / "config"
    config.write_text(f"rewrite = {rules}\n")
    shown = sc("config", env=sc_env(SC_CONFIG=str(config)))
    assert shown.returncode == 0, shown.stderr
    assert f"rewrite = {shown_rules}  # {config}:1\n" in shown.stdout, shown.stdout
    assert not any(secret in shown.stdout for secret in secrets), shown.stdout


@pytest.mark.parametrize("password", ["s3cret/word", "s3cret?word", "s3cret#word", "12#s3cret"])
def test_a_rewrite_mirror_password_with_a_slash_question_mark_or_hash_is_refused_saying_how_to_write_it(
        tmp_path, password):
    # A "/", "?" or "#" in a password ends the authority for a URL parser: the rest is no URL, and
    # its user info cannot be told from its path.  The mirror was refused as "not a URL", shown
    # as one that looked right, where a proxy's password is said how to write.
    config = tmp_path / "config"
    config.write_text(f"rewrite = http://origin.site/ = http://bob:{password}@mirror.site/x/\n")
    shown = sc("config", env=sc_env(SC_CONFIG=str(config)))
    assert (shown.returncode, shown.stdout, shown.stderr) == (
        2, "", f"sc: error: {config}:1: rewrite http://origin.site/: the mirror 'http://mirror.site/x/' is not a URL "
               "(a '/', '?' or '#' in the user name or password of a URL is written %2F, %3F or %23)\n")
