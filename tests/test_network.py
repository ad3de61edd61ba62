"""Networks as users have them, with a real squid: curl's proxy variables, no_proxy, a proxy chain
that fails over when a proxy is stopped, HTTPS through CONNECT to a TLS origin signed by a test CA;
offline mode; the config file; what ``-v`` says off a terminal."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from origin import Origin
from scutil import (SC, Sleeper, ThreadedServer, check_tree, control, kill_populator_and_take_over, read_head, resumable,
                    sample_files, sc, sc_env, stop_process, tarball_bytes, user_dir, wait_for)
from squid import Squid, free_port

import sharedcache
from sharedcache.errors import ConfigError, SettingError

FILES = sample_files(n=10, size=20_000)
DATA = tarball_bytes(FILES)
SHA256 = hashlib.sha256(DATA).hexdigest()


def recipe(url: str) -> list[str]:
    return [f"http:{url}", f"sha256:{SHA256}", "tar"]


@pytest.fixture
def owner() -> Iterator[Sleeper]:
    with Sleeper() as sleeper:
        yield sleeper


@pytest.fixture
def squid() -> Iterator[Squid]:
    with Squid() as proxy:
        yield proxy


def use(base: Path, owner: Sleeper, url: str, *extra: str, env: dict[str, str] | None = None,
        name: str = "data") -> subprocess.CompletedProcess[str]:
    return sc("--use", "-n", name, "-d", str(base), "--pid", str(owner.pid), *extra, *recipe(url),
              env=env if env is not None else sc_env())


def split_use(base: Path, owner: Sleeper, name: str, url: str, payload: bytes,
              env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``sc --use -v --connections 4`` of ``payload`` at ``url``, checked: the data is the payload."""
    result = sc("--use", "-v", "-n", name, "-d", str(base), "--pid", str(owner.pid), "--connections", "4",
                f"http:{url}", f"sha256:{hashlib.sha256(payload).hexdigest()}", env=env)
    assert result.returncode == 0, result.stderr
    assert (Path(result.stdout.strip()) / url.rpartition("/")[2]).read_bytes() == payload
    return result


def version() -> str:
    src = Path(__file__).parent.parent / "src"
    out = subprocess.run([sys.executable, "-c", "import sharedcache; print(sharedcache.__version__)"],
                         capture_output=True, text=True, timeout=30, env=sc_env(PYTHONPATH=str(src)))
    return out.stdout.strip()


# --- curl's variables ----------------------------------------------------------------------------


def test_http_proxy_is_used_with_our_user_agent(tmp_path, origin, squid, owner):
    url = origin.add("/data.tar.gz", DATA)
    result = use(tmp_path, owner, url, env=sc_env(http_proxy=squid.url))
    assert result.returncode == 0, result.stderr
    check_tree(user_dir(tmp_path) / "data", FILES)
    assert [(m, u) for m, u, _, _ in squid.requests()] == [("GET", url)]
    assert squid.requests()[0][3] == f"shared-cache/{version()}"


def test_no_proxy_bypasses_and_upper_case_http_proxy_is_ignored(tmp_path, origin, squid, owner):
    url = origin.add("/data.tar.gz", DATA)
    dead = f"http://127.0.0.1:{free_port()}"
    # HTTP_PROXY is ignored as curl ignores it (a CGI program may get it from a request header);
    # no_proxy sends 127.0.0.1 past the proxy that http_proxy names.
    for n, env in enumerate([sc_env(HTTP_PROXY=dead), sc_env(http_proxy=squid.url, no_proxy="localhost,127.0.0.1"),
                             sc_env(http_proxy=squid.url, NO_PROXY="*")]):
        result = use(tmp_path, owner, url, env=env, name=f"data{n}")
        assert result.returncode == 0, (env, result.stderr)
        check_tree(user_dir(tmp_path) / f"data{n}", FILES)
    assert squid.requests() == []
    assert origin.stats("/data.tar.gz").gets == 3


def test_each_url_of_a_redirect_takes_its_own_route(tmp_path, origin, squid, owner):
    # One origin under two names: 127.0.0.1, which no_proxy sends past the proxy, and localhost,
    # which goes through it.  Each hop of a redirect goes as curl would send it, whichever way the
    # first went.
    url = origin.add("/data.tar.gz", DATA)
    named = url.replace("127.0.0.1", "localhost")
    env = sc_env(http_proxy=squid.url, no_proxy="127.0.0.1")
    direct_first = origin.redirect("/direct/data.tar.gz", named)
    result = use(tmp_path, owner, direct_first, env=env, name="direct-first")
    assert result.returncode == 0, result.stderr
    check_tree(user_dir(tmp_path) / "direct-first", FILES)
    assert [u for _, u, _, _ in squid.requests()] == [named]
    proxied_first = origin.redirect("/proxied/data.tar.gz", url).replace("127.0.0.1", "localhost")
    result = use(tmp_path, owner, proxied_first, env=env, name="proxied-first")
    assert result.returncode == 0, result.stderr
    check_tree(user_dir(tmp_path) / "proxied-first", FILES)
    assert [u for _, u, _, _ in squid.requests()] == [named, proxied_first]
    assert origin.stats("/data.tar.gz").gets == 2


def test_a_redirect_is_split_over_the_connections_where_its_route_lets_it(tmp_path, origin, squid, owner):
    # One origin under two names, as above: whether --connections splits the download is up to the
    # route of the URL that serves the file, not the first one's.
    payload = os.urandom(8 << 20)
    url = origin.add("/data.bin", payload)
    named = url.replace("127.0.0.1", "localhost")
    env = sc_env(http_proxy=squid.url, no_proxy="127.0.0.1")
    proxied_first = origin.redirect("/proxied/data.bin", url).replace("127.0.0.1", "localhost")
    split_use(tmp_path, owner, "proxied-first", proxied_first, payload, env)
    assert len(origin.stats("/data.bin").ranges) >= 4, origin.stats("/data.bin")  # 0- and the other parts
    ranges = origin.stats("/data.bin").ranges[:]
    split_use(tmp_path, owner, "direct-first", origin.redirect("/direct/data.bin", named), payload, env)
    # Through the proxy, the whole file was asked for, which squid answers 200 (to a range, 206).
    assert [status for _, seen, status, _ in squid.requests() if seen == named] == ["TCP_MISS/200"], \
        squid.requests()
    assert origin.stats("/data.bin").ranges == ranges, origin.stats("/data.bin")


def test_all_proxy_applies_when_no_scheme_variable_is_set(tmp_path, origin, squid, owner):
    url = origin.add("/data.tar.gz", DATA)
    result = use(tmp_path, owner, url, env=sc_env(ALL_PROXY=squid.url))
    assert result.returncode == 0, result.stderr
    assert [u for _, u, _, _ in squid.requests()] == [url]


def test_proxy_credentials_are_sent_and_never_shown(tmp_path, origin, owner):
    url = origin.add("/data.tar.gz", DATA)
    with Squid(users={"alice": "s3cret-word"}) as proxy:
        address = proxy.url.removeprefix("http://")
        refused = use(tmp_path, owner, url, "-v", env=sc_env(http_proxy=proxy.url, SC_CONFIG="/dev/null"),
                      name="refused")
        assert refused.returncode == 1, refused.stderr
        assert f"HTTP 407 Proxy Authentication Required for {url} via proxy {proxy.url}" in refused.stderr
        result = use(tmp_path, owner, url, "-v", env=sc_env(SC_PROXY=f"http://alice:s3cret-word@{address}"))
        assert result.returncode == 0, result.stderr
        check_tree(user_dir(tmp_path) / "data", FILES)
        assert [(m, u) for m, u, _, _ in proxy.requests()][-1] == ("GET", url)
        chain = f"http://alice:s3cret-word@{address};alice:s3cret-word@{address}|DIRECT"
        shown = sc("config", env=sc_env(SC_PROXY=chain))
        assert shown.returncode == 0, shown.stderr
        assert f"proxy = http://{address};http://{address}|DIRECT  # SC_PROXY" in shown.stdout, shown.stdout
        assert "s3cret" not in result.stderr + shown.stdout


# --- a site's squid ------------------------------------------------------------------------------


def test_hosts_with_connections_and_a_takeover_behind_the_site_squid_make_one_origin_download(
        tmp_path, origin, squid, owner):
    """Hosts one after another behind the squid of docs/site-squid.md, with ``--connections 4``,
    the first SIGKILLed midway and taken over: the origin serves the file once.  Parts and the
    takeover's resume ask for ranges, which squid by default forwards to the origin without caching
    their answers (``range_offset_limit``), and the fetch of a client gone is given up
    (``quick_abort_min``): every host downloaded the whole file from the origin.  Through a proxy
    that sees its requests, each ``sc`` makes one: parts bring nothing there."""
    payload = os.urandom(12 << 20)
    # Published a day ago: fresh for hours by squid's heuristic, never revalidated during the test.
    url = origin.add("/data.bin", payload, modified_at=time.time() - 86400)
    env = sc_env(http_proxy=squid.url)
    hosts = [tmp_path / f"host{number}" for number in range(3)]
    for base in hosts:
        base.mkdir()

    def args(base: Path) -> list[str]:
        return ["--use", "-d", str(base), "--pid", str(owner.pid), "--connections", "4", f"http:{url}",
                f"sha256:{hashlib.sha256(payload).hexdigest()}"]

    origin.rate = 4 << 20
    results = [kill_populator_and_take_over(args(hosts[0]), lambda: resumable(hosts[0]), env=env)]
    results += [(result.returncode, result.stdout, result.stderr)
                for result in (sc(*args(base), env=env) for base in hosts[1:])]
    for status, out, err in results:
        assert status == 0, err
        assert (Path(out.strip()) / "data.bin").read_bytes() == payload
    stats = origin.stats("/data.bin")
    assert (stats.gets, stats.bytes_served) == (1, len(payload)), stats
    asked = [method for method, seen, _, _ in squid.requests() if seen == url]
    assert asked == ["GET"] * 4, squid.requests()  # the killed host, its taker and two more: no parts


# --- the proxy chain -----------------------------------------------------------------------------


def test_chain_fails_over_when_a_proxy_is_stopped(tmp_path, origin, owner):
    url = origin.add("/data.tar.gz", DATA)
    with Squid() as first, Squid() as second:
        first.stop()
        started = time.monotonic()
        result = use(tmp_path, owner, url, "-v", "--proxy", f"{first.url};{second.url}")
        took = time.monotonic() - started
        assert result.returncode == 0, result.stderr
        check_tree(user_dir(tmp_path) / "data", FILES)
        assert [u for _, u, _, _ in second.requests()] == [url]
        failover = [line for line in result.stderr.splitlines() if "failing over" in line]
        assert len(failover) == 1, result.stderr
        assert f"proxy {first.url} failed" in failover[0] and f"proxy {second.url}" in failover[0]
        assert "refused" in failover[0].lower()
        assert took < 10, "a stopped proxy costs a refused connection, not the retry policy"


@pytest.fixture
def silent_proxy() -> Iterator[str]:
    """A proxy address on 127.0.0.1 that never answers a connection: its accept queue is full, so
    the kernel drops new SYNs, as a host that is down or firewalled would."""
    import socket

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    address = server.getsockname()
    queued: list[socket.socket] = []
    try:
        while True:
            client = socket.socket()
            client.settimeout(0.5)
            try:
                client.connect(address)
            except TimeoutError:
                client.close()
                break
            queued.append(client)
            assert len(queued) < 64, "the accept queue does not fill"
        yield f"http://{address[0]}:{address[1]}"
    finally:
        for client in queued:
            client.close()
        server.close()


def test_a_silent_proxy_costs_one_short_connect_timeout(tmp_path, origin, owner, silent_proxy):
    url = origin.add("/data.tar.gz", DATA)
    started = time.monotonic()
    result = use(tmp_path, owner, url, "-v", "--proxy", f"{silent_proxy};DIRECT")
    took = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    failover = [line for line in result.stderr.splitlines() if "failing over" in line]
    assert len(failover) == 1 and f"proxy {silent_proxy} failed" in failover[0], result.stderr
    assert "timed out" in failover[0], failover[0]
    assert 4.5 < took < 15, f"{took:.1f} s: the fail-over connect timeout is 5 s (the connect timeout is 30 s)"


def test_chain_with_direct_and_every_proxy_down(tmp_path, origin, owner):
    url = origin.add("/data.tar.gz", DATA)
    dead = [f"http://127.0.0.1:{free_port()}" for _ in range(2)]
    result = use(tmp_path, owner, url, "-v", env=sc_env(SC_PROXY=f"{dead[0]}|{dead[1]};DIRECT"))
    assert result.returncode == 0, result.stderr
    assert "failing over to a direct connection" in result.stderr
    config = tmp_path / "config"
    config.write_text(f"proxy = {dead[0]}\nretries = 1\nconnect_timeout = 2\nverbose = yes\n")
    env = sc_env(SC_CONFIG=str(config))
    failed = use(tmp_path, owner, url, env=env, name="other")
    assert failed.returncode == 1
    errors = [line for line in failed.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and f"via proxy {dead[0]}" in errors[0] and "(after 2 attempts)" in errors[0], \
        failed.stderr
    assert "retrying" in failed.stderr and "attempt 2 of 2" in failed.stderr


def test_a_chain_failed_over_to_direct_is_split_over_the_connections(tmp_path, origin, owner):
    # The proxy that the first attempt tried, which would have got one connection, is not the route
    # that sends the download.
    payload = os.urandom(8 << 20)
    url = origin.add("/data.bin", payload)
    dead = f"http://127.0.0.1:{free_port()}"
    result = split_use(tmp_path, owner, "data", url, payload, sc_env(SC_PROXY=f"{dead};DIRECT"))
    assert "failing over to a direct connection" in result.stderr
    assert len(origin.stats("/data.bin").ranges) >= 4, origin.stats("/data.bin")  # 0- and the other parts


# --- HTTPS through CONNECT -----------------------------------------------------------------------


def test_https_goes_through_connect(tmp_path, tls_origin, squid, owner):
    server, ca = tls_origin
    server.add("/data.tar.gz", DATA)
    url = f"https://127.0.0.1:{server.port}/data.tar.gz"
    env = sc_env(https_proxy=squid.url, SSL_CERT_FILE=str(ca))
    result = use(tmp_path, owner, url, env=env)
    assert result.returncode == 0, result.stderr
    check_tree(user_dir(tmp_path) / "data", FILES)
    # The proxy saw a tunnel to the origin, not the URL: the bytes were verified end to end by TLS.
    assert [(m, u) for m, u, _, _ in squid.requests()] == [("CONNECT", f"127.0.0.1:{server.port}")]
    assert server.stats("/data.tar.gz").gets == 1
    # http_proxy does not apply to https URLs.
    again = use(tmp_path, owner, url, env=sc_env(http_proxy=squid.url, SSL_CERT_FILE=str(ca)), name="direct")
    assert again.returncode == 0, again.stderr
    assert len(squid.requests()) == 1


def test_https_through_a_proxy_is_split_over_the_connections(tmp_path, tls_origin, squid, owner):
    # The tunnel reaches the origin end to end, which the parts of --connections are for: an
    # http:// URL alone is fetched over one connection through a proxy.
    server, ca = tls_origin
    payload = os.urandom(8 << 20)
    server.add("/data.bin", payload)
    url = f"https://127.0.0.1:{server.port}/data.bin"
    split_use(tmp_path, owner, "data", url, payload, sc_env(https_proxy=squid.url, SSL_CERT_FILE=str(ca)))
    assert len(server.stats("/data.bin").ranges) > 2, server.stats("/data.bin")  # the first request's and parts
    assert {method for method, _, _, _ in squid.requests()} == {"CONNECT"}


def test_a_tunnel_the_proxy_refuses_fails_at_once_naming_the_proxy(tmp_path, tls_origin, owner):
    server, ca = tls_origin
    server.add("/data.tar.gz", DATA)
    url = f"https://127.0.0.1:{server.port}/data.tar.gz"
    with Squid(users={"alice": "s3cret-word"}) as proxy:
        started = time.monotonic()
        result = use(tmp_path, owner, url, env=sc_env(https_proxy=proxy.url, SSL_CERT_FILE=str(ca)))
        took = time.monotonic() - started
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and f"via proxy {proxy.url}" in result.stderr, result.stderr
    assert "407 Proxy Authentication Required" in result.stderr, result.stderr
    assert took < 5, "a refusal is not retried"
    assert server.stats("/data.tar.gz").gets == 0


def test_a_proxys_own_reason_for_refusing_a_tunnel_is_kept_from_the_waiters(tmp_path, tls_origin, owner):
    # The reason phrase of its status line is the proxy's to write: it may repeat a credential,
    # and a lone quote in it made the quoting of the rest of the line misread.
    server, ca = tls_origin
    url = f"https://127.0.0.1:{server.port}/data.tar.gz"

    def refuse(conn: socket.socket) -> None:
        read_head(conn)
        conn.sendall(b"HTTP/1.1 403 token ' SECRETREASON refused\r\nContent-Length: 0\r\n\r\n")

    proxy = ThreadedServer(refuse)
    try:
        result = use(tmp_path, owner, url, "--proxy", f"http://127.0.0.1:{proxy.port}",
                     env=sc_env(SSL_CERT_FILE=str(ca)))
    finally:
        proxy.stop()
    assert result.returncode == 1 and "SECRETREASON" in result.stderr, result.stderr  # its own line says it all
    message = json.loads((control(tmp_path) / "populate" / "data.error").read_text())["message"]
    assert "SECRET" not in message and "Tunnel connection failed: 403 (the server says …)" in message, message


def failed_over_from_a_tunnel(tmp_path, tls_origin, owner, after_connect,  # type: ignore[no-untyped-def]
                              **environment: str) -> float:
    """Download over HTTPS, in an environment with ``environment`` too, through a chain of a
    proxy that reads the ``CONNECT`` and then does ``after_connect(conn, proxy)``, and ``DIRECT``:
    the download must fail over to ``DIRECT`` once, saying so, and succeed.  Returns the seconds
    it took."""
    server, ca = tls_origin
    server.add("/data.tar.gz", DATA)
    url = f"https://127.0.0.1:{server.port}/data.tar.gz"
    asked: list[bytes] = []

    def answer(conn: socket.socket) -> None:
        conn.settimeout(60)
        asked.append(read_head(conn) or b"")
        after_connect(conn, proxy)

    proxy = ThreadedServer(answer)
    try:
        started = time.monotonic()
        result = use(tmp_path, owner, url, "-v", "--proxy", f"http://127.0.0.1:{proxy.port};DIRECT",
                     env=sc_env(SSL_CERT_FILE=str(ca), **environment))
        took = time.monotonic() - started
    finally:
        proxy.stop()
    assert result.returncode == 0, result.stderr
    assert asked and asked[0].startswith(b"CONNECT 127.0.0.1:"), asked
    failover = [line for line in result.stderr.splitlines() if "failing over" in line]
    assert len(failover) == 1 and f"proxy http://127.0.0.1:{proxy.port} failed" in failover[0], result.stderr
    check_tree(user_dir(tmp_path) / "data", FILES)
    return took


def test_a_proxy_that_never_answers_connect_is_failed_over(tmp_path, tls_origin, owner):
    # It takes the connection (a stopped or overloaded squid), then says nothing: urllib3 takes
    # the proxy for reached once its TCP connection is made, so each attempt timed out as a read
    # and was retried on the same proxy, and the download failed although DIRECT would do.
    took = failed_over_from_a_tunnel(tmp_path, tls_origin, owner, lambda conn, proxy: proxy.stopping.wait(60))
    assert took < 15, f"{took:.1f} s: the fail-over connect timeout is 5 s"


# Loaded by sc as its sitecustomize: every TLS context it makes has OP_IGNORE_UNEXPECTED_EOF
# set ("|=") or cleared ("&= ~"), whatever this interpreter's default (Debian's Python sets it
# on every context).  Set, a handshake that meets the end of the stream raises
# SSLZeroReturnError; cleared, SSLEOFError, or a plain SSLError where the interpreter does not
# map OpenSSL 3's reason (Python 3.11.2).
UNEXPECTED_EOF_OPTION = """
import ssl

_new_context = ssl.SSLContext.__new__


def _new_context_with_the_option(cls, *args, **kwargs):
    context = _new_context(cls, *args, **kwargs)
    context.options {operator} ssl.OP_IGNORE_UNEXPECTED_EOF
    return context


ssl.SSLContext.__new__ = _new_context_with_the_option
"""


def open_the_tunnel(conn: socket.socket) -> None:
    conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")


def close_before_the_client_hello(conn: socket.socket, proxy: ThreadedServer) -> None:
    open_the_tunnel(conn)
    # The end of the stream follows the answer, so that the handshake meets it whenever the
    # ClientHello comes: closing the socket would reset the connection instead, were the
    # ClientHello there first.
    conn.shutdown(socket.SHUT_WR)
    proxy.stopping.wait(60)


def close_after_reading_the_client_hello(conn: socket.socket, proxy: ThreadedServer) -> None:
    open_the_tunnel(conn)
    record_head = read_exactly(conn, 5)  # its TLS record's: type, version, length
    read_exactly(conn, int.from_bytes(record_head[3:5], "big"))


def read_exactly(conn: socket.socket, size: int) -> bytes:
    read = b""
    while len(read) < size:
        chunk = conn.recv(size - len(read))
        if not chunk:
            raise ConnectionError(f"closed after {len(read)} of {size} bytes")
        read += chunk
    return read


def close_with_the_client_hello_unread(conn: socket.socket, proxy: ThreadedServer) -> None:
    open_the_tunnel(conn)
    conn.recv(1, socket.MSG_PEEK)  # closed with bytes unread, the connection is reset


@pytest.mark.parametrize("close", [close_before_the_client_hello, close_after_reading_the_client_hello,
                                   close_with_the_client_hello_unread], ids=["before", "after", "unread"])
@pytest.mark.parametrize("ignore_unexpected_eof", [True, False], ids=["eof-ignored", "eof-reported"])
def test_a_proxy_that_opens_the_tunnel_then_closes_it_is_failed_over(tmp_path, tls_origin, owner, close,
                                                                      ignore_unexpected_eof):
    # It answers CONNECT with 200, then closes the connection (a proxy that could not reach the
    # origin after all, or was stopped): the TLS handshake met the end of the stream (or a reset,
    # the ClientHello unread), which was taken for the origin's TLS failing, which no retry or
    # other member fixes, and the download failed although DIRECT would do.  It did so still
    # where OpenSSL ignores an unexpected end of the stream (Debian's Python: "TLS/SSL connection
    # has been closed (EOF)"), and where Python does not map its reason to SSLEOFError.
    site = tmp_path / "site"
    site.mkdir()
    operator = "|=" if ignore_unexpected_eof else "&= ~"
    (site / "sitecustomize.py").write_text(UNEXPECTED_EOF_OPTION.format(operator=operator))
    failed_over_from_a_tunnel(tmp_path, tls_origin, owner, close, PYTHONPATH=str(site))


def test_a_certificate_refused_through_a_proxy_s_tunnel_is_not_failed_over(tmp_path, tls_origin, squid, owner):
    # The origin's TLS answered through the tunnel, and its refusal is the origin's: no other
    # member of the route makes its certificate do.  Only a tunnel that ended before that
    # answer is the proxy's to fail over from.
    server, _ = tls_origin  # its CA not given
    server.add("/data.tar.gz", DATA)
    url = f"https://127.0.0.1:{server.port}/data.tar.gz"
    result = use(tmp_path, owner, url, "-v", "--proxy", f"{squid.url};DIRECT")
    assert result.returncode == 1, result.stderr
    assert "failing over" not in result.stderr, result.stderr
    assert f"via proxy {squid.url}: " in result.stderr and "untrusted server certificate" in result.stderr, result.stderr
    assert [m for m, _, _, _ in squid.requests()] == ["CONNECT"]


def test_a_proxy_that_asks_for_credentials_is_failed_over_for_plain_http_too(tmp_path, origin, owner):
    # Through a CONNECT tunnel a 407 failed over; to a plain-HTTP request the proxy forwards, the
    # 407 was taken for the origin's answer, and the download failed although DIRECT would do.
    url = origin.add("/data.tar.gz", DATA)
    asked: list[bytes] = []

    def refuse(conn: socket.socket) -> None:
        asked.append(read_head(conn) or b"")
        conn.sendall(b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"p\"\r\n"
                     b"Content-Length: 0\r\n\r\n")

    proxy = ThreadedServer(refuse)
    try:
        result = use(tmp_path, owner, url, "-v", "--proxy", f"http://127.0.0.1:{proxy.port};DIRECT")
    finally:
        proxy.stop()
    assert result.returncode == 0, result.stderr
    assert asked and asked[0].startswith(f"GET {url} ".encode()), asked
    failover = [line for line in result.stderr.splitlines() if "failing over" in line]
    assert len(failover) == 1 and "HTTP 407" in failover[0], result.stderr
    assert origin.stats("/data.tar.gz").gets == 1
    check_tree(user_dir(tmp_path) / "data", FILES)


def test_a_squid_proxy_that_cannot_forward_is_failed_over_for_plain_http(tmp_path, origin, owner):
    # Its parent down and never going direct, squid answers every GET with its own 502: the
    # download retried it to the end of the retries and failed, although DIRECT would do (an
    # https:// URL, whose CONNECT it refuses, failed over).  Its retries spent, it is failed over.
    url = origin.add("/data.tar.gz", DATA)
    unreachable_parent = f"cache_peer 127.0.0.1 parent {free_port()} 0 no-query no-digest\nnever_direct allow all\n"
    config = tmp_path / "config"
    config.write_text("retries = 1\n")
    with Squid(config=unreachable_parent) as proxy:
        result = use(tmp_path, owner, url, "-v", "--proxy", f"{proxy.url};DIRECT", env=sc_env(SC_CONFIG=str(config)))
        asked = proxy.requests()
    assert result.returncode == 0, result.stderr
    failover = [line for line in result.stderr.splitlines() if "failing over" in line]
    assert len(failover) == 1 and f"proxy {proxy.url} failed" in failover[0], result.stderr
    assert "X-Squid-Error" in failover[0] and "a direct connection" in failover[0], failover[0]
    assert f"retrying {url} via proxy {proxy.url}" in result.stderr and "attempt 2 of 2" in result.stderr
    assert [(u, status.rpartition("/")[2]) for _, u, status, _ in asked] == [(url, "502")] * 2, asked
    assert origin.stats("/data.tar.gz").vias == [None]
    check_tree(user_dir(tmp_path) / "data", FILES)


def test_a_squid_proxy_failed_over_is_failed_over_again_when_the_route_comes_back_to_it(tmp_path, owner):
    # Its retries spent, the broken squid was failed over to DIRECT, whose connection the origin
    # refused once (a restart): the route went back to the squid, never failed over again, and
    # every retry left went to it ("HTTP 502 ... via proxy"), though the origin was back.
    port = free_port()  # the origin's, where nothing listens until DIRECT was refused
    url = f"http://127.0.0.1:{port}/data.tar.gz"
    unreachable_parent = f"cache_peer 127.0.0.1 parent {free_port()} 0 no-query no-digest\nnever_direct allow all\n"
    config = tmp_path / "config"
    config.write_text("retries = 3\n")
    stderr = tmp_path / "stderr"
    with Squid(config=unreachable_parent) as proxy, open(stderr, "w") as log:
        proc = subprocess.Popen([*SC, "--use", "-v", "-n", "data", "-d", str(tmp_path), "--pid", str(owner.pid),
                                 "--proxy", f"{proxy.url};DIRECT", *recipe(url)],
                                stdout=subprocess.PIPE, stderr=log, text=True, env=sc_env(SC_CONFIG=str(config)))
        try:
            wait_for(lambda: f"retrying {url} in " in stderr.read_text() or proc.poll() is not None,
                     timeout=60, what="a refused direct connection")
            with Origin(port=port) as origin:
                origin.add("/data.tar.gz", DATA)
                proc.communicate(timeout=60)
                vias = origin.stats("/data.tar.gz").vias
        finally:
            stop_process(proc)
        asked = proxy.requests()
    result = stderr.read_text()
    assert proc.returncode == 0, result
    refused = result.count(f"retrying {url} in ")
    failover = [line for line in result.splitlines() if "failing over to a direct connection" in line]
    assert refused >= 1 and len(failover) == 1 + refused, result
    # Its four answers, then one each time a refused connection sent the route back to it.
    assert [status.rpartition("/")[2] for _, _, status, _ in asked] == ["502"] * (4 + refused), asked
    assert vias == [None]
    check_tree(user_dir(tmp_path) / "data", FILES)


@pytest.mark.parametrize("made_by", [
    {},  # the origin itself
    {"X-Squid-Error": "ERR_CONNECT_FAIL 111", "Via": "1.1 accelerator (squid/6.10)"},  # the origin's own squid
    # The origin itself, faking the proxy's own error, which moved the client off its proxy at once.
    {"X-Squid-Error": "ERR_CONNECT_FAIL 111"},
])
def test_an_origin_s_5xx_relayed_by_the_proxy_is_retried_through_it(tmp_path, origin, squid, owner, made_by):
    url = origin.add("/data.tar.gz", DATA)
    origin.fault("/data.tar.gz", status=503, headers=made_by)
    result = use(tmp_path, owner, url, "-v", "--proxy", f"{squid.url};DIRECT")
    assert result.returncode == 0, result.stderr
    assert "failing over" not in result.stderr
    assert f"retrying {url} via proxy {squid.url}" in result.stderr and "HTTP 503" in result.stderr
    assert [u for _, u, _, _ in squid.requests()] == [url, url]
    vias = origin.stats("/data.tar.gz").vias
    assert len(vias) == 2 and all(via and "squid" in via for via in vias), vias  # none direct
    check_tree(user_dir(tmp_path) / "data", FILES)


def use_through(base: Path, owner: Sleeper, url: str, digest: str, proxy: Squid) -> subprocess.CompletedProcess[str]:
    """``sc --use -v`` of the file at ``url`` whose sha256 is ``digest``, through the chain
    ``proxy;DIRECT``, in base directory ``base`` (a host of its own)."""
    base.mkdir(exist_ok=True)
    return sc("--use", "-v", "-n", "file", "-d", str(base), "--pid", str(owner.pid), "--proxy", f"{proxy.url};DIRECT",
              f"http:{url}", f"sha256:{digest}", env=sc_env())


def test_a_stale_copy_in_the_proxy_is_fetched_again_from_the_origin(tmp_path, origin, squid, owner):
    # Published a year ago, the first version is fresh in squid for days by its heuristic; the
    # origin's new version at the same URL failed the checksum on every host that asked for it.
    old, new = os.urandom(1 << 20), os.urandom(1 << 20)
    url = origin.add("/tool.bin", old, modified_at=time.time() - 365 * 86400)
    first = use_through(tmp_path / "host1", owner, url, hashlib.sha256(old).hexdigest(), squid)
    assert first.returncode == 0, first.stderr
    # Squid counts ages in whole seconds: a copy it got within the second is the origin's current.
    cached = time.time()
    while time.time() < int(cached) + 2:
        time.sleep(0.05)
    origin.add("/tool.bin", new)
    result = use_through(tmp_path / "host2", owner, url, hashlib.sha256(new).hexdigest(), squid)
    assert result.returncode == 0, result.stderr
    assert (Path(result.stdout.strip()) / "tool.bin").read_bytes() == new
    assert f"asking proxy {squid.url}, which it came through, to check its copy" in result.stderr
    assert origin.stats("/tool.bin").gets == 2  # the first host's, and the second's revalidation: no more
    assert [u for _, u, _, _ in squid.requests()] == [url] * 3


def test_a_checksum_that_fails_again_through_the_proxy_names_it(tmp_path, origin, squid, owner):
    url = origin.add("/tool.bin", os.urandom(1 << 20))
    result = use_through(tmp_path, owner, url, "0" * 64, squid)
    assert result.returncode == 1, result.stderr
    error = result.stderr.strip().splitlines()[-1]
    assert "sha256 mismatch" in error and f"it came through proxy {squid.url}, asked to check its copy" in error
    assert origin.stats("/tool.bin").gets == 2  # one fetch again, no more


def test_a_wrong_checksum_through_the_proxy_has_the_origin_serve_the_file_once(tmp_path, origin, squid, owner):
    # A recipe whose checksum is wrong (a typo, a stale recipe) fails on every host of a site, each
    # having squid check its copy with the origin: asked for a reload instead, squid fetched the
    # whole file from the origin again for every host.
    payload = os.urandom(1 << 20)
    url = origin.add("/tool.bin", payload)
    for host in range(3):
        result = use_through(tmp_path / f"host{host}", owner, url, "0" * 64, squid)
        assert result.returncode == 1 and "sha256 mismatch" in result.stderr, result.stderr
    stats = origin.stats("/tool.bin")
    assert stats.bytes_served == len(payload) and set(stats.statuses[1:]) <= {304}, stats


def test_a_copy_cut_short_in_the_proxy_is_fetched_anew(tmp_path, origin, squid, owner):
    # The origin's answer had no length and the network cut it: squid took the close for its end
    # and cached the cut body as the file.  Asked to check that copy, squid got the origin's 304
    # and served it again: every host failed until the copy expired.
    payload = os.urandom(2 << 20)
    url = origin.add("/tool.bin", payload)
    origin.fault("/tool.bin", no_length=True, drop_after=1 << 20)
    result = use_through(tmp_path, owner, url, hashlib.sha256(payload).hexdigest(), squid)
    assert result.returncode == 0, result.stderr
    assert (Path(result.stdout.strip()) / "tool.bin").read_bytes() == payload
    assert f"asking proxy {squid.url}, which it came through, to fetch the file anew" in result.stderr
    assert origin.stats("/tool.bin").statuses == [200, 200]


# --- offline -------------------------------------------------------------------------------------


def test_offline_serves_what_is_here_and_fails_fast_on_a_miss(tmp_path, origin, owner):
    url = origin.add("/data.tar.gz", DATA)
    assert use(tmp_path, owner, url, "--keep").returncode == 0
    config = tmp_path / "config"
    config.write_text("offline = yes\n")
    for extra, env in [(["--offline"], sc_env()), ([], sc_env(SC_OFFLINE="1")), ([], sc_env(SC_CONFIG=str(config)))]:
        ready = use(tmp_path, owner, url, *extra, env=env)
        assert ready.returncode == 0 and ready.stdout == f"{user_dir(tmp_path) / 'data'}\n", ready.stderr
        answers = len(origin.stats("/data.tar.gz").statuses)
        miss = use(tmp_path, owner, url, *extra, env=env, name="missing")
        assert miss.returncode == 1
        assert miss.stderr.startswith("sc: error: offline: ") and miss.stderr.count("\n") == 1, miss.stderr
        assert url in miss.stderr
        # Fast because it asked nothing (no request, so no retry either).
        assert len(origin.stats("/data.tar.gz").statuses) == answers, "an offline miss asked the origin"
        assert not (tmp_path / "missing").exists()
        # Nothing written but the population's lock file, which every population leaves.
        left = [p.name for p in (control(tmp_path)).glob("**/missing*")]
        assert left == ["missing.lock"], left
    assert origin.stats("/data.tar.gz").gets == 1, "offline, nothing connects"


def test_the_python_api_reads_the_settings_too(tmp_path, origin, monkeypatch):
    import sharedcache
    from sharedcache.errors import DownloadError

    url = origin.add("/data.tar.gz", DATA)
    config = tmp_path / "config"
    config.write_text(f"offline = yes\ndirectories = {tmp_path}\n")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "nothing"))
    monkeypatch.setenv("SC_CONFIG", str(config))
    with pytest.raises(DownloadError, match="^offline: repository 'data' is not here"), \
            sharedcache.use(*recipe(url), name="data"):
        pass
    assert origin.stats("/data.tar.gz").gets == 0
    config.write_text(f"directories = {tmp_path}\n")
    with sharedcache.use(*recipe(url), name="data", keep=True) as path:
        assert path == user_dir(tmp_path) / "data"
    assert origin.stats("/data.tar.gz").gets == 1


# --- the config file -----------------------------------------------------------------------------



def test_the_python_api_s_connections_win_over_a_config_file_s_1_included(tmp_path, origin, monkeypatch):
    # use(connections=1) was taken for "not given", 1 being its default: a file's
    # "connections = 4" fetched in four parts what the program asked to fetch over one.
    import sharedcache

    payload = os.urandom(4_000_000)  # (enough for four parts)
    checksum = f"sha256:{hashlib.sha256(payload).hexdigest()}"
    config = tmp_path / "config"
    config.write_text("connections = 4\n")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "nothing"))
    monkeypatch.setenv("SC_CONFIG", str(config))
    for n, (connections, gets) in enumerate(((1, 1), (2, 2), (None, 4))):
        url = origin.add(f"/data{n}.bin", payload)
        with sharedcache.use(f"http:{url}", checksum, directories=[str(tmp_path)], connections=connections) as path:
            assert (path / f"data{n}.bin").read_bytes() == payload
        assert origin.stats(f"/data{n}.bin").gets == gets, connections
    with pytest.raises(sharedcache.UsageError, match="^give connections in fetch, or alone, not both$"), \
            sharedcache.use(f"http:{url}", checksum, directories=[str(tmp_path)], connections=1,
                            fetch=sharedcache.FetchPolicy()):
        pass

def test_config_file_layers_and_sc_config_shows_sources(tmp_path, origin, squid, owner):
    url = origin.add("/data.tar.gz", DATA)
    home = tmp_path / "home"
    (home / "shared-cache").mkdir(parents=True)
    (home / "shared-cache" / "config").write_text(
        f"# the user's settings\nproxy = {squid.url}\ndirectories = {tmp_path / 'nowhere'}\nretries=2\n")
    site = tmp_path / "site.conf"
    site.write_text(f"directories = {tmp_path}\nconnections = 2  # later files win key by key\n")
    env = sc_env(XDG_CONFIG_HOME=str(home), SC_CONFIG=str(site))
    shown = sc("config", env=env)
    assert shown.returncode == 0, shown.stderr
    lines = dict(line.split(" = ", 1) for line in shown.stdout.splitlines())
    assert lines["directories"] == f"{tmp_path}  # {site}:1"
    assert lines["connections"] == f"2  # {site}:2"
    assert lines["proxy"] == f"{squid.url}  # {home / 'shared-cache' / 'config'}:2"
    assert lines["retries"].endswith(f"# {home / 'shared-cache' / 'config'}:4")
    assert lines["offline"] == "no  # default"
    assert lines["verbose"] == "(not set)  # default"
    flagged = dict(line.split(" = ", 1) for line in sc("config", "--connections", "3", "--offline",
                                                         env=env).stdout.splitlines())
    assert flagged["connections"] == "3  # --connections" and flagged["offline"] == "yes  # --offline"
    # The file's proxy is used; curl's variables in the environment override it.
    result = sc("--use", "-n", "data", "--pid", str(owner.pid), *recipe(url), env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{user_dir(tmp_path) / 'data'}\n"
    assert [u for _, u, _, _ in squid.requests()] == [url]
    bypass = sc("--use", "-n", "data2", "--pid", str(owner.pid), *recipe(url),
                env={**env, "http_proxy": f"http://127.0.0.1:{free_port()}", "no_proxy": "127.0.0.1"})
    assert bypass.returncode == 0, bypass.stderr
    assert len(squid.requests()) == 1
    assert "http_proxy" in sc("config", env={**env, "http_proxy": squid.url}).stdout


@pytest.mark.parametrize(("variables", "expected"), [
    ({"http_proxy": "http://al:s3cret@squid.site:3128", "https_proxy": "https://al:s3cret@tls.site:3129"},
     "http://squid.site:3128 for http://, https://tls.site:3129 for https://  # http_proxy, https_proxy"),
    ({"HTTPS_PROXY": "tls.site:3129"}, "DIRECT for http://, http://tls.site:3129 for https://  # HTTPS_PROXY"),
    ({"all_proxy": "http://al:s3cret@squid.site:3128"}, "http://squid.site:3128  # all_proxy"),
    ({"https_proxy": "http://tls.site:3129", "ALL_PROXY": "http://squid.site:3128"},
     "http://squid.site:3128 for http://, http://tls.site:3129 for https://  # ALL_PROXY, https_proxy"),
    ({}, "(none: curl's variables apply)  # default"),
])
def test_sc_config_shows_the_proxy_of_curls_variables_and_which_they_are(tmp_path, variables, expected):
    config = tmp_path / "config"
    config.write_text("proxy = http://file.site:3128\n")  # which curl's variables override
    for env in (sc_env(**variables), sc_env(SC_CONFIG=str(config), **variables)):
        shown = sc("config", env=env)
        assert shown.returncode == 0, shown.stderr
        lines = dict(line.split(" = ", 1) for line in shown.stdout.splitlines())
        if variables or "SC_CONFIG" not in env:
            assert lines["proxy"] == expected, shown.stdout
        assert "s3cret" not in shown.stdout


@pytest.mark.parametrize(("text", "expected"), [
    ("colour = blue\n", ":1: unknown key 'colour'"),
    ("# fine\nconnections = many\n", ":2: connections: invalid value 'many'"),
    ("connections = 99\n", ":1: connections must be between 1 and 32"),
    ("proxy = ftp://x\n", ":1: proxy cannot use 'ftp://x'"),
    ("offline = perhaps\n", ":1: offline must be yes or no"),
    ("just words\n", ":1: expected 'key = value'"),
    ("max_size = lots\n", ":1: max_size must be a size: 'lots' (expected bytes or a number with a unit"),
    ("max_size = 9000PiB\n", ":1: max_size must be a size: '9000PiB' is more than 8 EiB"),  # (said "invalid value")
    ("speed_limit = 1 XB\n", ":1: speed_limit must be a size: '1 XB' (expected bytes"),
    ("timeout = nan\n", ":1: timeout must be a number of seconds, not nan"),
    ("timeout = -1\n", ":1: timeout must be a number of seconds, not -1.0"),
    ("proxy = http://[::1\n", ":1: proxy cannot use 'http://[::1'"),
    ("proxy = proxy.site:99999\n", ":1: proxy cannot use 'proxy.site:99999'"),
    ("proxy = proxy\x00.site\n", ":1: proxy cannot use 'proxy\\x00.site'"),
    ("x" * 100_000 + "\n", ":1: expected 'key = value', not '" + "x" * 80 + "…" + "x" * 80 + "' (100,000 characters)"),
])
def test_a_bad_config_is_one_line_naming_file_and_key(tmp_path, owner, text, expected):
    config = tmp_path / "config"
    config.write_text(text)
    result = sc("--use", "-d", str(tmp_path), "--pid", str(owner.pid), "file:/nonexistent",
                env=sc_env(SC_CONFIG=str(config)))
    assert result.returncode == 2
    assert result.stderr.startswith(f"sc: error: {config}{expected}"), result.stderr
    assert result.stderr.count("\n") == 1, result.stderr


def test_fetch_settings_are_checked_by_a_miss_and_sc_config_not_by_a_use_of_ready_data(tmp_path, owner):
    data = tmp_path / "data.txt"
    data.write_text("ready")
    config = tmp_path / "config"
    use = ("--use", "-d", str(tmp_path), "--pid", str(owner.pid), f"file:{data}")
    assert sc(*use).returncode == 0
    config.write_text("connections = 99\n")
    env = sc_env(SC_CONFIG=str(config))
    ready = sc(*use, env=env)
    assert ready.returncode == 0 and ready.stderr == "", ready.stderr
    option = sc(*use[:-1], "--connections", "99", f"file:{data}")  # the caller's own input: at once
    assert option.returncode == 2 and option.stderr.startswith("sc: error: --connections must be between 1 and 32")
    miss, shown = sc(*use[:-1], "-n", "other", f"file:{data}", env=env), sc("config", env=env)
    for result in (miss, shown):
        assert result.returncode == 2, result.stderr
        assert result.stderr == f"sc: error: {config}:1: connections must be between 1 and 32, not 99\n"
    assert ".cache" in os.listdir(user_dir(tmp_path)) and "other" not in os.listdir(user_dir(tmp_path))
    assert not [name for name in os.listdir(control(tmp_path) / "populate") if name.startswith("other")]


def test_a_fetch_option_checks_itself_not_the_fetch_settings_of_files_and_variables(tmp_path, owner):
    # A fetch option (--connections, --offline...) made sc check the whole fetch policy at once:
    # a site's proxy typo, or a netrc that is a directory, failed a use of ready data, its
    # location, and its release (the use then held for good), though none of them fetches.
    data = tmp_path / "data.txt"
    data.write_text("ready")
    config = tmp_path / "config"
    recipe = ("-d", str(tmp_path), "-n", "ready", f"file:{data}")
    assert sc("--use", "--pid", str(owner.pid), *recipe).returncode == 0
    for text, variables in (("proxy = http://squid.site:3128|\n", {}), (f"netrc = {tmp_path}\n", {}),
                            ("", {"SC_PROXY": "squid.site:3128;"})):
        config.write_text(text)
        env = sc_env(SC_CONFIG=str(config), **variables)
        for command in (["--use", "--connections", "2"], ["--location", "--offline"], ["--use", "--speed-limit", "0"],
                        ["--unuse", "--speed-time", "5"], ["--use", "--proxy", "DIRECT"]):
            result = sc(*command, "--pid", str(owner.pid), *recipe, env=env)
            assert (result.returncode, result.stderr) == (0, ""), (text, command, result.stderr)
        use = ("import sys, sharedcache\n"
               f"with sharedcache.use('file:{data}', name='ready', directories={str(tmp_path)!r}, connections=2): pass\n")
        result = subprocess.run([sys.executable, "-c", use], env=env, capture_output=True, text=True, timeout=60)
        assert (result.returncode, result.stderr) == (0, ""), (text, result.stderr)
    # The option itself is checked at once, as any option is; the file's settings by a miss.
    config.write_text("proxy = http://squid.site:3128|\n")
    env = sc_env(SC_CONFIG=str(config))
    bad_option = sc("--unuse", "--proxy", "a b", "--pid", str(owner.pid), *recipe, env=env)
    assert bad_option.returncode == 2 and bad_option.stderr.startswith("sc: error: --proxy cannot use 'a b'")
    miss = sc("--use", "--connections", "2", "--pid", str(owner.pid), *recipe[:-3], "-n", "other", f"file:{data}",
              env=env)
    assert miss.returncode == 2 and miss.stderr.startswith(f"sc: error: {config}:1: proxy has an empty member")


def test_the_help_of_proxy_names_its_defaults_in_the_order_they_win(tmp_path):
    # It said "$SC_PROXY, config, http_proxy...", where curl's variables replace a file's chain.
    config = tmp_path / "config"
    config.write_text("proxy = file.site:3128\n")
    winners = []
    for variables in ({"SC_PROXY": "sc.site:3128", "http_proxy": "http://curl.site:3128"},
                      {"http_proxy": "http://curl.site:3128"}, {}):
        shown = sc("config", env=sc_env(SC_CONFIG=str(config), **variables))
        winners.append(next(line for line in shown.stdout.splitlines() if line.startswith("proxy = ")).split("  # ")[1])
    assert winners == ["SC_PROXY", "http_proxy", f"{config}:1"]
    helped = next(line for line in sc("--help").stdout.splitlines() if line.lstrip().startswith("--proxy"))
    assert helped.index("$SC_PROXY") < helped.index("http_proxy") < helped.index("config"), helped


def test_a_fetch_option_is_checked_with_the_fetch_settings_it_goes_with(tmp_path, owner):
    # --speed-time 0 is valid without a speed limit: checked alone, against the built-in speed
    # limit instead of a file's speed_limit = 0, it was refused, though sc config took it.
    data = tmp_path / "data.txt"
    data.write_text("ready")
    config = tmp_path / "config"
    recipe = ("--pid", str(owner.pid), "-d", str(tmp_path), "-n", "ready", f"file:{data}")
    assert sc("--use", *recipe).returncode == 0
    config.write_text("speed_limit = 0\n")
    for command in ("--use", "--location", "--unuse"):
        result = sc(command, "--speed-time", "0", *recipe, env=sc_env(SC_CONFIG=str(config)))
        assert (result.returncode, result.stderr) == (0, ""), (command, result.stderr)
    # With a speed limit, the option is still refused at once, whichever gives the limit, and a
    # bad file setting that comes first neither hides it nor fails a use of ready data.
    assert sc("--use", *recipe).returncode == 0
    for text in ("speed_limit = 5\n", "connections = 0\nproxy = a b\n"):
        config.write_text(text)
        result = sc("--use", "--speed-time", "0", *recipe, env=sc_env(SC_CONFIG=str(config)))
        assert (result.returncode, result.stderr.splitlines()) == (2, [
            "sc: error: --speed-time must be more than 0 seconds when there is a speed limit (see 'sc --help')"])
    config.write_text("speed_time = 0\nconnections = 0\n")
    result = sc("--unuse", "--speed-limit", "5", *recipe, env=sc_env(SC_CONFIG=str(config)))
    assert (result.returncode, result.stderr) == (0, ""), result.stderr
    miss = sc("--use", "--speed-limit", "5", *recipe[:-3], "-n", "other", f"file:{data}",
              env=sc_env(SC_CONFIG=str(config)))
    assert miss.returncode == 2 and miss.stderr.startswith(f"sc: error: {config}:2: connections must be"), miss.stderr


def test_bad_settings_from_the_environment_and_a_missing_sc_config(tmp_path, owner):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # a FIFO must not hang sc
    cases = [({"SC_OFFLINE": "perhaps"}, "sc: error: SC_OFFLINE: offline must be yes or no"),
             ({"SC_PROXY": "a b"}, "sc: error: SC_PROXY: proxy cannot use 'a b'"),
             ({"SC_PROXY": "http://[::1"}, "sc: error: SC_PROXY: proxy cannot use 'http://[::1'"),
             ({"SC_CONFIG": str(tmp_path / "absent")}, f"sc: error: {tmp_path / 'absent'}: no such"),
             ({"SC_CONFIG": str(fifo)}, f"sc: error: {fifo}: the config file is not a regular file"),
             ({"SC_CONFIG": str(tmp_path)}, f"sc: error: {tmp_path}: the config file is not a regular file")]
    for env, expected in cases:
        result = sc("--use", "-d", str(tmp_path), "--pid", str(owner.pid), "file:/x", env=sc_env(**env))
        assert result.returncode == 2 and result.stderr.startswith(expected), result.stderr
        assert result.stderr.count("\n") == 1


def test_a_list_of_directories_that_names_none_says_where_it_was_given(tmp_path):
    # "no candidate directory given (see 'sc --help')", as if an option had said so: neither the
    # file and line nor the variable was named, and sc config printed every setting first.
    config = tmp_path / "config"
    config.write_text("directories =\n")
    for env, source in (({"SC_CONFIG": str(config)}, f"{config}:1"), ({"SC_DIRECTORIES": ":"}, "SC_DIRECTORIES")):
        for command in (["list"], ["config"]):
            result = sc(*command, env=sc_env(**env))
            assert (result.returncode, result.stdout, result.stderr) == (
                2, "", f"sc: error: {source}: directories names no directory (paths separated by ':')\n")


def test_a_nul_byte_in_the_directories_of_a_file_names_its_file_and_line(tmp_path):
    # Refused where it was used, it named no file or line and sent to 'sc --help', though no
    # option was given.
    config = tmp_path / "config"
    config.write_bytes(f"directories = {tmp_path}\0x\n".encode())
    for command in (["--use", "file:/x"], ["list"], ["config"]):
        result = sc(*command, env=sc_env(SC_CONFIG=str(config)))
        assert (result.returncode, result.stdout, result.stderr) == (
            2, "", f"sc: error: {config}:1: directories cannot name a directory: it holds a NUL byte\n")


def test_paths_of_the_settings_take_tilde_as_home_and_a_file_refuses_relative_ones(tmp_path, origin, owner):
    # "directories = ~/scratch" in the user's file was "$PWD/~/scratch": jobs started in two
    # directories used two caches, each downloading the data once more.
    home, first, second = tmp_path / "home", tmp_path / "first", tmp_path / "second"
    for directory in (home / ".config" / "shared-cache", home / "scratch", first / "here", second):
        directory.mkdir(parents=True)
    (home / "ca.pem").write_text("")
    user_file = home / ".config" / "shared-cache" / "config"
    user_file.write_text("directories = ~/scratch:/nonexistent/also\nca_bundle = ~/ca.pem\n")
    env = sc_env(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"))
    shown = sc("config", env=env)
    assert shown.returncode == 0, shown.stderr
    assert f"directories = {home}/scratch:/nonexistent/also  # {user_file}:1\n" in shown.stdout, shown.stdout
    assert f"ca_bundle = {home}/ca.pem  # {user_file}:2\n" in shown.stdout, shown.stdout
    url = origin.add("/data.tar.gz", DATA)
    for cwd in (first, second):
        used = sc("--use", "-n", "data", "--pid", str(owner.pid), *recipe(url), env=env, cwd=cwd)
        assert (used.returncode, used.stdout) == (0, f"{user_dir(home / 'scratch') / 'data'}\n"), used.stderr
    assert origin.stats("/data.tar.gz").gets == 1
    assert not [path for path in tmp_path.rglob("~")], "a directory named ~ was made"
    # A variable's "~" is the home too (quoted, no shell made it so); its relative paths, as an
    # option's, are the working directory's.
    variable = sc("config", env={**env, "SC_DIRECTORIES": "~/other:relative"}, cwd=first)
    assert f"directories = {home}/other:relative  # SC_DIRECTORIES\n" in variable.stdout, variable.stderr
    option = sc("--use", "-d", "here", "-n", "data", "--pid", str(owner.pid), *recipe(url), env=env, cwd=first)
    assert (option.returncode, option.stdout) == (0, f"{user_dir(first / 'here') / 'data'}\n"), option.stderr
    # A file's relative path depends on where each command runs: refused, naming the file and line.
    for text, key, path in (("keep = yes\ndirectories = /tmp:scratch\n", "directories", "scratch"),
                            ("keep = yes\nnetrc = .netrc\n", "netrc", ".netrc"),
                            ("keep = yes\nclient_cert = ./cert.pem\n", "client_cert", "./cert.pem")):
        user_file.write_text(text)
        for command in (["config"], ["list"]):
            result = sc(*command, env=env, cwd=first)
            assert (result.returncode, result.stdout, result.stderr) == (
                2, "", f"sc: error: {user_file}:2: {key} names the relative path '{path}': a config file is read "
                       "from any directory, so give it from / or ~/\n"), (text, result.stderr)
    user_file.write_text("directories = ~no-such-user-here/scratch\n")
    unknown = sc("list", env=env)
    assert (unknown.returncode, unknown.stderr) == (2, f"sc: error: {user_file}:1: directories names "
                                                       "'~no-such-user-here/scratch', but there is no user "
                                                       "'no-such-user-here'\n"), unknown.stderr


def test_a_group_that_names_no_group_says_where_it_was_given(tmp_path):
    # "no such group: 'x' (see 'sc --help')", as if an option had said so: neither the file nor
    # the line was named, and sc config printed every setting before it failed.
    config = tmp_path / "config"
    config.write_text("keep = yes\ngroup = no-such-group-here\n")
    env = sc_env(SC_CONFIG=str(config))
    for command in (["config"], ["list"], ["--use", "-d", str(tmp_path), "file:/nonexistent.tar", "tar"]):
        result = sc(*command, env=env)
        assert (result.returncode, result.stdout, result.stderr) == (
            2, "", f"sc: error: {config}:2: group 'no-such-group-here': no such group\n")
    option = sc("config", "--group", "no-such-group-here", env=env)
    assert (option.returncode, option.stdout, option.stderr) == (
        2, "", "sc: error: --group 'no-such-group-here': no such group (see 'sc --help')\n")


def test_a_credential_path_that_cannot_be_used_says_where_it_was_set(tmp_path, owner):
    # A missing ca_bundle, client_cert or bearer_token_file passed sc config, then failed every
    # HTTPS miss naming the path alone ("cannot use the CA bundle ...: No such file or
    # directory"), never the file and line that set it; a missing netrc, or one that is a
    # directory, was taken for none without a word.
    cert, data = tmp_path / "cert.pem", tmp_path / "data.txt"
    cert.write_text("not used: the line after it fails first\n")
    data.write_text("ready")
    missing = tmp_path / "missing"
    cases = [(f"ca_bundle = {missing}\n", 1, "ca_bundle", missing, "No such file or directory"),
             (f"client_cert = {missing}\n", 1, "client_cert", missing, "No such file or directory"),
             (f"client_cert = {cert}\nclient_key = {missing}\n", 2, "client_key", missing, "No such file or directory"),
             (f"keep = yes\nbearer_token_file = {missing}\n", 2, "bearer_token_file", missing,
              "No such file or directory"),
             (f"netrc = {missing}\n", 1, "netrc", missing, "No such file or directory"),
             (f"netrc = {tmp_path}\n", 1, "netrc", tmp_path, "it is a directory, not a file"),
             (f"client_cert = {cert}/key.pem\n", 1, "client_cert", cert / "key.pem", "Not a directory")]
    config = tmp_path / "config"
    use = ("--use", "-d", str(tmp_path), "--pid", str(owner.pid))
    for text, line, key, path, why in cases:
        config.write_text(text)
        env = sc_env(SC_CONFIG=str(config))
        for command in (["config"], [*use, "-n", "missed", f"file:{data}"]):
            result = sc(*command, env=env)
            assert (result.returncode, result.stdout, result.stderr) == (
                2, "", f"sc: error: {config}:{line}: {key} cannot use {path}: {why}\n"), (text, command)
    assert not (user_dir(tmp_path) / "missed").exists()
    # Ready data fetches nothing: its use neither reads nor checks them, nor does a listing.
    assert sc(*use, "-n", "ready", f"file:{data}").returncode == 0
    config.write_text("".join(text for text, *_ in cases[2:6]))
    env = sc_env(SC_CONFIG=str(config))
    for command in ([*use, "-n", "ready", f"file:{data}"], ["--location", "-d", str(tmp_path), "-n", "ready",
                                                             f"file:{data}"], ["list", "-d", str(tmp_path)]):
        result = sc(*command, env=env)
        assert (result.returncode, result.stderr) == (0, ""), (command, result.stderr)


def test_a_config_file_under_a_file_is_a_missing_one(tmp_path):
    # A service account's HOME=/dev/null made every command fail: "cannot read the config file:
    # Not a directory", for the user's file that cannot be there.
    env = {name: value for name, value in sc_env().items() if name != "XDG_CONFIG_HOME"}
    result = sc("config", env={**env, "HOME": os.devnull})
    assert (result.returncode, result.stderr) == (0, ""), result.stderr
    named = sc("config", env=sc_env(SC_CONFIG=f"{os.devnull}/config"))
    assert named.returncode == 2 and named.stderr == f"sc: error: {os.devnull}/config: no such config file " \
                                                     "(named by SC_CONFIG)\n", named.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root, to run sc as another user")
def test_a_config_file_behind_a_directory_closed_to_the_user_is_a_missing_one(reachable_tmp):
    # sudo keeping HOME, or a user namespace whose HOME is the host root's: the user file, which
    # this user cannot even look up, failed every command ("Permission denied"); git skips it.
    from scutil import interpreter_for

    home = reachable_tmp / "home"
    (home / ".config" / "shared-cache").mkdir(parents=True)
    (home / ".config" / "shared-cache" / "config").write_text("keep = yes\n")
    home.chmod(0o700)
    seen = reachable_tmp / "seen"
    (seen / "shared-cache").mkdir(parents=True)
    (seen / "shared-cache" / "config").write_text("keep = yes\n")
    (seen / "shared-cache" / "config").chmod(0)
    python, env = interpreter_for(65534, 65534)
    env = {name: value for name, value in env.items() if name != "XDG_CONFIG_HOME"}

    def config(**extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([python, "-m", "sharedcache", "config"], env={**env, **extra}, user=65534, group=65534,
                              capture_output=True, text=True, timeout=60)

    closed = config(HOME=str(home))
    assert (closed.returncode, closed.stderr) == (0, ""), closed.stderr
    assert "keep = (not set)" in closed.stdout
    unreadable = config(HOME=str(home), XDG_CONFIG_HOME=str(seen))  # there to see, not to read: said
    assert unreadable.returncode == 2 and unreadable.stderr == (
        f"sc: error: {seen}/shared-cache/config: cannot read the config file: Permission denied\n"), unreadable.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root, to run sc as another user")
def test_sc_config_of_a_user_its_namespace_does_not_map_prints_one_line_and_no_row(reachable_tmp):
    # In a user namespace without a map, sc config printed every row, then failed (exit 1) as it
    # named the user's directory in each base, for the warning of a cleaner of /tmp.
    from scutil import interpreter_for

    python, env = interpreter_for(65534, 65534)
    unmapped = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "unshare", "--user"]
    probe = subprocess.run([*unmapped, "true"], capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        pytest.skip(f"no user namespace for another user here: {probe.stderr.strip()}")
    shown = subprocess.run([*unmapped, python, "-m", "sharedcache", "config", "-d", str(reachable_tmp)],
                           env={**env, "HOME": str(reachable_tmp)}, capture_output=True, text=True, timeout=60)
    assert (shown.returncode, shown.stdout) == (1, ""), shown
    assert "has no uid outside its user namespace" in shown.stderr and shown.stderr.count("\n") == 1, shown.stderr


def test_a_config_file_a_windows_editor_wrote_is_read(tmp_path):
    # Its byte order mark joined the first key: "unknown key '\ufeffkeep'".
    config = tmp_path / "config"
    config.write_bytes("keep = yes\r\nmax_size = 1GB\r\n".encode("utf-8-sig"))
    shown = sc("config", env=sc_env(SC_CONFIG=str(config)))
    assert shown.returncode == 0, shown.stderr
    assert f"keep = yes  # {config}:1\n" in shown.stdout and f"max_size = 1GB  # {config}:2\n" in shown.stdout


def test_a_hash_within_a_value_of_a_config_file_is_kept(tmp_path, owner):
    # Any "#" started a comment: "proxy = http://alice:2024#Secret@squid.site:3128" was the proxy
    # http://alice:2024, the host alice, shown with the password's start by sc config and every
    # error, where --proxy refuses that URL saying how to write the "#"; and a directory
    # "/scratch/job#1" was /scratch/job.  A comment starts at a "#" after a space or tab.
    job = tmp_path / "scratch" / "job#1"
    job.mkdir(parents=True)
    data = tmp_path / "data.txt"
    data.write_text("data")
    config = tmp_path / "config"
    config.write_text(f"directories = {job}:/tmp  # the job's scratch first\n\t# retries = 9\nretries = 3\t#\n")
    env = sc_env(SC_CONFIG=str(config))
    shown = sc("config", env=env)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith(f"directories = {job}:/tmp  # {config}:1\n"), shown.stdout
    assert f"\nretries = 3  # {config}:3\n" in shown.stdout, shown.stdout
    used = sc("--use", "--pid", str(owner.pid), "-n", "data", f"file:{data}", env=env)
    assert (used.returncode, used.stdout) == (0, f"{user_dir(job) / 'data'}\n"), used.stderr
    proxy = "http://alice:2024#Secret@squid.site:3128"
    config.write_text(f"proxy = {proxy}\n")
    refused = sc("config", "--proxy", proxy)
    assert refused.returncode == 2 and refused.stderr.startswith("sc: error: --proxy cannot use "), refused.stderr
    reason = refused.stderr.removeprefix("sc: error: --").removesuffix(" (see 'sc --help')\n")
    for command in (["config"], ["--use", "-d", str(tmp_path), "--pid", str(owner.pid), "-n", "remote",
                                 f"http:http://127.0.0.1:{free_port()}/data"]):
        result = sc(*command, env=env)
        assert (result.returncode, result.stdout, result.stderr) == (2, "", f"sc: error: {config}:1: {reason}\n")
        assert "alice" not in result.stderr and "2024" not in result.stderr, result.stderr


def test_a_config_file_past_1_mib_is_refused_in_one_line_without_reading_it_whole(tmp_path):
    # SC_CONFIG naming a disk image by mistake: every command read it whole to fail at its first
    # line (830 MB of memory for 400 MB), and under a limit of memory said "out of memory".
    import resource

    config = tmp_path / "config"
    comment = "# " + "x" * 1021 + "\n"
    config.write_text(comment * 1023 + "# " + "x" * 1010 + "\nkeep = yes\n")
    assert config.stat().st_size == 1 << 20
    shown = sc("config", env=sc_env(SC_CONFIG=str(config)))
    assert shown.returncode == 0 and "\nkeep = yes  # " in shown.stdout, shown.stderr
    with config.open("a") as grown:
        grown.write("\n")
    image = tmp_path / "data.img"
    with image.open("wb") as sparse:
        sparse.truncate(400 << 20)

    def within_256_mib() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (256 << 20, 256 << 20))

    for path in (config, image):
        for command in (["config"], ["--location", "-d", str(tmp_path), "-n", "data", f"file:{config}"]):
            result = sc(*command, env=sc_env(SC_CONFIG=str(path)), preexec_fn=within_256_mib)
            assert (result.returncode, result.stdout, result.stderr) == (
                2, "", f"sc: error: {path}: cannot read the config file: it is larger than 1 MiB\n")


def test_v_and_q_replace_the_verbose_and_quiet_of_the_config_files(tmp_path, owner):
    # Verbosity is one setting written with two keys.  Counted apart, as their difference, a
    # file's "quiet = yes" cancelled -v, and its "verbose = yes" -q; sc config showed both.
    data = tmp_path / "data.txt"
    data.write_text("data")
    config, home = tmp_path / "config", tmp_path / "home"
    (home / "shared-cache").mkdir(parents=True)
    env = sc_env(SC_CONFIG=str(config), XDG_CONFIG_HOME=str(home))
    use = ("--use", "-d", str(tmp_path), "--pid", str(owner.pid), f"file:{data}")
    config.write_text("quiet = yes\n")
    said = sc("-v", "-n", "said", *use, env=env)
    assert said.returncode == 0 and "sc: 'said' is ready: " in said.stderr, said.stderr
    config.write_text("verbose = yes\n")
    silent = sc("-q", "-n", "silent", *use, env=env)
    assert (silent.returncode, silent.stderr) == (0, ""), silent.stderr
    shown = sc("config", "-q", env=env)
    # (A count of -q or -v is shown as the yes a file writes: it showed "quiet = 1".)
    assert "\nverbose = no  # --quiet\nquiet = yes  # --quiet\n" in shown.stdout, shown.stdout
    shown = sc("config", "-vv", env=sc_env(SC_CONFIG=os.devnull, XDG_CONFIG_HOME=str(tmp_path / "none")))
    assert "\nverbose = yes  # --verbose\nquiet = (not set)  # default\n" in shown.stdout, shown.stdout

    def shown_for(text: str) -> str:
        config.write_text(text)
        return sc("config", env=env).stdout

    # A later file's (or line's) one replaces an earlier one's other, as another value would.
    (home / "shared-cache" / "config").write_text("verbose = yes\n")
    shown = shown_for("quiet = yes\n")
    assert f"\nverbose = no  # {config}:1\nquiet = yes  # {config}:1\n" in shown, shown
    shown = shown_for("quiet = yes\nverbose = yes\n")
    assert f"\nverbose = yes  # {config}:2\nquiet = no  # {config}:2\n" in shown, shown
    assert sc("-n", "said-again", *use, env=env).stderr.startswith("sc: populating 'said-again'")
    # Turning one off leaves the other as it was: "quiet = no" after "verbose = yes" turned
    # verbose off, and "verbose = no" after "quiet = yes" turned quiet off.
    shown = shown_for("verbose = yes\nquiet = no\n")
    assert f"\nverbose = yes  # {config}:1\nquiet = no  # {config}:2\n" in shown, shown
    shown = shown_for("quiet = yes\nverbose = no\n")
    assert f"\nverbose = no  # {config}:2\nquiet = yes  # {config}:1\n" in shown, shown


def test_config_shows_the_verbosity_that_v_and_q_together_give(tmp_path, owner):
    # Each -q takes back a -v on every command; sc config showed "verbose = yes" and
    # "quiet = yes" for -q -v, where a use is neither verbose nor quiet.
    data = tmp_path / "data.txt"
    data.write_text("data")
    env = sc_env(SC_CONFIG=os.devnull, XDG_CONFIG_HOME=str(tmp_path / "none"))
    use = ("--use", "-d", str(tmp_path), "--pid", str(owner.pid), f"file:{data}")
    for flags, verbose, quiet in ((("-q", "-v"), "no  # --verbose", "no  # --quiet"),
                                  (("-v", "-q"), "no  # --verbose", "no  # --quiet"),
                                  (("-vv", "-q"), "yes  # --verbose", "(not set)  # default"),
                                  (("-q", "-v", "-q"), "(not set)  # default", "yes  # --quiet")):
        shown = sc(flags[0], "config", *flags[1:], env=env)
        assert f"\nverbose = {verbose}\nquiet = {quiet}\n" in shown.stdout, (flags, shown.stdout)
    said = sc("-q", "-v", "-n", "neither", *use, env=env)
    assert (said.returncode, said.stderr) == (0, ""), said.stderr
    # Cancelled among the options, -q -v still replaces a file's verbosity, as one of them does.
    config = tmp_path / "config"
    config.write_text("verbose = yes\n")
    shown = sc("config", "-q", "-v", env=sc_env(SC_CONFIG=str(config), XDG_CONFIG_HOME=str(tmp_path / "none")))
    assert "\nverbose = no  # --verbose\nquiet = no  # --quiet\n" in shown.stdout, shown.stdout


@pytest.mark.parametrize("breaker", ["\f", "\v", "\x1c", "\x85", "\u2028", "\u2029"])
def test_a_config_file_s_lines_are_numbered_as_editors_number_them(tmp_path, breaker):
    # A form feed (a page break some editors write), a vertical tab, U+0085 or U+2028 ended a
    # line too: every error after one named a line below the bad one.
    config = tmp_path / "config"
    config.write_text(f"# site settings\n{breaker}\nretries = 3  # was 5{breaker}\r\nkeep = maybe\n", encoding="utf-8")
    result = sc("config", env=sc_env(SC_CONFIG=str(config)))
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (f"sc: error: {config}:4: keep must be yes or no (1/0, true/false, on/off), "
                             "not 'maybe'\n"), result.stderr


@pytest.mark.parametrize("proxy", ["http://[::1", "proxy.site:99999", "http://proxy.site:0", "ftp://proxy.site:21"])
def test_a_proxy_no_connection_can_use_is_one_line_naming_where_it_came_from(tmp_path, owner, proxy):
    url = f"http:http://127.0.0.1:{free_port()}/data"
    option = sc("--use", "-d", str(tmp_path), "--pid", str(owner.pid), "--proxy", proxy, url)
    assert option.returncode == 2 and option.stderr == (
        f"sc: error: --proxy cannot use {proxy!r}: expected DIRECT or [SCHEME://]HOST[:PORT] (SCHEME: http, https, socks5h, socks5, socks4a, socks4), groups "
        "separated by ';' and proxies inside a group by '|' (see 'sc --help')\n"), option.stderr
    curl_style = sc("--use", "-d", str(tmp_path), "-n", "data", "--pid", str(owner.pid), url,
                    env=sc_env(http_proxy=proxy))
    assert curl_style.returncode == 2 and curl_style.stderr.count("\n") == 1, curl_style.stderr
    assert curl_style.stderr.startswith(f"sc: error: http_proxy: proxy cannot use {proxy!r}")


@pytest.mark.parametrize(("variable", "proxy"), [("ALL_PROXY", "ftp://127.0.0.1:1"), ("http_proxy", ":"),
                                                ("https_proxy", "http://[::1")])
def test_a_proxy_variable_no_connection_can_use_fails_a_miss_before_anything_is_made(
        tmp_path, origin, owner, variable, proxy):
    # curl's variables were read by the download: a bad one failed the population once its work
    # directory was made, where the same proxy in a config file fails before the cache is touched.
    url = origin.add("/data.tar.gz", DATA)
    ready, base = tmp_path / "ready", tmp_path / "base"
    ready.mkdir()
    base.mkdir()
    assert use(ready, owner, url).returncode == 0
    bad = sc_env(**{variable: proxy})
    # A use of ready data does not read them, as it reads no fetch setting.
    assert use(ready, owner, url, env=bad).returncode == 0
    missed = use(base, owner, url, env=bad)
    assert missed.returncode == 2 and missed.stderr == (
        f"sc: error: {variable}: proxy cannot use {proxy!r}: expected DIRECT or [SCHEME://]HOST[:PORT] (SCHEME: http, https, socks5h, socks5, socks4a, socks4), "
        "groups separated by ';' and proxies inside a group by '|'\n"), missed.stderr
    assert not list(base.iterdir())  # no cache, no populate/*.work
    # A recipe that downloads nothing does not read them either.
    archive = tmp_path / "data.tar.gz"
    archive.write_bytes(DATA)
    local = sc("--use", "-n", "local", "-d", str(base), "--pid", str(owner.pid), f"file:{archive}", f"sha256:{SHA256}",
               "tar", env=bad)
    assert local.returncode == 0, local.stderr
    # Nor is the Python API's miss any different.
    api = tmp_path / "api"
    api.mkdir()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(variable, proxy)
        with pytest.raises(ConfigError, match=f"^{variable}: proxy cannot use "), \
                sharedcache.use(f"http:{url}", f"sha256:{SHA256}", "tar", directories=[str(api)]):
            pass
    assert not list(api.iterdir())
    assert origin.stats("/data.tar.gz").gets == 1


def test_a_timeout_that_is_no_number_of_seconds_is_refused(tmp_path, owner):
    for given in ("nan", "-1", "inf", "1e400"):
        result = sc("--use", "-d", str(tmp_path), "--pid", str(owner.pid), "--timeout", given, "file:/x")
        assert result.returncode == 2 and result.stderr.startswith("sc: error: option --timeout must be a number "
                                                                   "of seconds, not "), result.stderr
    with pytest.raises(SettingError, match="timeout must be a number of seconds, not -1"):
        with sharedcache.use("file:/x", directories=[str(tmp_path)], timeout=-1):
            raise AssertionError("no use may be held")


def test_a_timeout_of_minus_0_is_0(tmp_path, owner):
    # Taken as 0, and so it is, it was shown as "timed out after -0 s".
    source = tmp_path / "data.bin"
    source.write_bytes(os.urandom(100_000))
    config = tmp_path / "config"
    config.write_text("timeout = -0\n")
    for n, (args, env) in enumerate([(["--timeout", "-0"], sc_env()), ([], sc_env(SC_CONFIG=str(config)))]):
        result = sc("--use", "-d", str(tmp_path), "-n", f"late{n}", "--pid", str(owner.pid), *args, f"file:{source}",
                    env=env)
        assert result.returncode == 1 and result.stderr.startswith(
            f"sc: error: repository 'late{n}': timed out after 0 s populating it"), result.stderr
    with pytest.raises(sharedcache.SharedCacheError, match="^repository 'late2': timed out after 0 s populating it"):
        with sharedcache.use(f"file:{source}", name="late2", directories=[str(tmp_path)], timeout=-0.0):
            raise AssertionError("no use may be held")


@pytest.mark.parametrize(("arguments", "expected"), [
    ({"timeout": 1e308}, "timeout must be at most 9223372036 seconds, not 1e+308"),
    ({"connections": True}, "use(connections=...) must be between 1 and 32, not True"),
    ({"connections": True, "fetch": sharedcache.FetchPolicy()}, "give connections in fetch, or alone, not both"),
])
def test_the_api_refuses_a_timeout_past_any_wait_and_a_bool_for_connections(tmp_path, origin, arguments, expected):
    # 1e308 seconds is finite, but no deadline could be computed from it; True is an int equal to 1.
    url = origin.add("/data", b"data")
    with pytest.raises(sharedcache.UsageError) as caught:
        with sharedcache.use(f"http:{url}", directories=[str(tmp_path)], **arguments):
            raise AssertionError("no use may be held")
    assert str(caught.value) == expected
    assert origin.stats("/data").gets == 0


def test_a_timeout_past_any_wait_is_one_line(tmp_path, owner):
    config = tmp_path / "config"
    config.write_text("connect_timeout = 1e300\n")
    for args, env in ((["--timeout", "1e308"], sc_env()), ([], sc_env(SC_CONFIG=str(config)))):
        result = sc("--use", "-d", str(tmp_path), "--pid", str(owner.pid), *args, f"http:http://127.0.0.1:{free_port()}/x",
                    env=env)
        assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
        assert "must be at most 9223372036 seconds, not 1e+30" in result.stderr, result.stderr


# --- saying what happens -------------------------------------------------------------------------


def test_verbose_off_a_terminal_shows_retries_and_progress_lines(tmp_path, origin, owner):
    big = os.urandom(3 * 1024 * 1024)
    url = origin.add("/big.bin", big)
    origin.fault("/big.bin", status=503)
    origin.rate = 450_000  # about 7 s: a progress line every 5 s, and one at the end
    result = sc("--use", "-v", "-n", "big", "-d", str(tmp_path), "--pid", str(owner.pid), f"http:{url}",
                f"sha256:{hashlib.sha256(big).hexdigest()}", timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    retries = [line for line in lines if "retrying" in line]
    assert len(retries) == 1 and "(HTTP 503; attempt 2 of 6)" in retries[0], result.stderr
    progress = [line for line in lines if line.startswith("sc: big: ")]
    assert 2 <= len(progress) <= 3, result.stderr
    assert progress[-1] == "sc: big: 3.0 MiB of 3.0 MiB (100%)", result.stderr
    assert all("\r" not in line for line in lines)


def test_verbose_tells_resumes_and_restarts_with_their_reasons(tmp_path, origin, owner):
    big = os.urandom(1_000_000)
    url = origin.add("/big.bin", big)
    origin.fault("/big.bin", drop_after=300_000)  # cut: resumed with a Range request...
    origin.fault("/big.bin", new_etag=True)       # ...which finds another file: started over
    result = sc("--use", "-v", "-n", "big", "-d", str(tmp_path), "--pid", str(owner.pid), f"http:{url}",
                f"sha256:{hashlib.sha256(big).hexdigest()}")
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    resumed = [line for line in lines if line.startswith(f"sc: resuming {url} at byte 300000 in ")]
    assert len(resumed) == 1 and "attempt 2 of 6" in resumed[0], result.stderr
    restarted = [line for line in lines if line.startswith(f"sc: starting {url} over (cannot resume")]
    assert len(restarted) == 1 and "attempt 2 of 6" in restarted[0], result.stderr
    assert origin.stats("/big.bin").gets == 3


@pytest.mark.parametrize("cut_at", [0, 150_000])
def test_a_download_cut_by_a_server_without_validators_says_why_in_one_line(tmp_path, origin, owner, cut_at):
    # Without an ETag or Last-Modified a cut download starts over; when every attempt is cut, the
    # line said "cannot resume ... at byte 0" (nothing to resume there), and urllib3's reason
    # came twice ("Connection broken: IncompleteRead(...): IncompleteRead(...)").
    url = origin.add("/cut.bin", os.urandom(300_000), etag=False, last_modified=False)
    origin.fault("/cut.bin", drop_after=cut_at, times=10)
    result = sc("--use", "-d", str(tmp_path), "--pid", str(owner.pid), f"http:{url}")
    assert result.returncode == 1, result.stderr
    [line] = result.stderr.splitlines()
    where = "failed before its first byte: " if cut_at == 0 else f"broke off at byte {cut_at} ("
    assert f"download of {url} {where}" in line, line
    assert line.count("IncompleteRead") == 1 and line.endswith("(6 attempts, each from the start)"), line
    assert origin.stats("/cut.bin").gets == 6


def test_a_bare_url_gets_a_hint(tmp_path, owner):
    for word in ["https://example.org/data.tar", "http://example.org/data.tar"]:
        result = sc("--use", "-d", str(tmp_path), "--pid", str(owner.pid), word)
        assert result.returncode == 2
        assert f"'{word}' looks like a bare URL: write http:{word}" in result.stderr, result.stderr



@pytest.mark.parametrize(("url", "environ", "proxy", "expected"), [
    ("http://h.example.org/x", {"http_proxy": "p:3128"}, None, ["http://p:3128"]),
    ("http://h.example.org/x", {"HTTP_PROXY": "http://p:3128"}, None, ["DIRECT"]),
    ("https://h.example.org/x", {"HTTPS_PROXY": "http://P:1", "https_proxy": "http://p:1"}, None, ["http://p:1"]),
    ("https://h.example.org/x", {"http_proxy": "http://p:1"}, None, ["DIRECT"]),
    ("https://h.example.org/x", {"ALL_PROXY": "http://a:1", "http_proxy": "http://p:1"}, None, ["http://a:1"]),
    ("http://h.example.org/x", {"http_proxy": "http://p:1", "no_proxy": ".example.org"}, None, ["DIRECT"]),
    ("http://example.org/x", {"http_proxy": "http://p:1", "no_proxy": "example.org"}, None, ["DIRECT"]),
    ("http://badexample.org/x", {"http_proxy": "http://p:1", "no_proxy": "example.org"}, None, ["http://p:1"]),
    ("http://10.1.2.3/x", {"http_proxy": "http://p:1", "NO_PROXY": "192.168.0.1, 10.0.0.0/8"}, None, ["DIRECT"]),
    ("http://[::1]:8/x", {"http_proxy": "http://p:1", "no_proxy": "[::1]"}, None, ["DIRECT"]),
    ("http://h/x", {"http_proxy": "http://p:1"}, "http://a:1;DIRECT", ["http://a:1", "DIRECT"]),
    ("http://h/x", {"no_proxy": "h"}, "http://a:1;DIRECT", ["DIRECT"]),
])
def test_the_route_of_a_url_follows_curl(url, environ, proxy, expected):
    """The route table, as curl reads its variables (the servers above check that routes are taken)."""
    from sharedcache.config.settings import FetchPolicy
    from sharedcache.loaders.transport import route

    assert route(url, FetchPolicy(proxy=proxy), environ) == expected


def test_a_group_of_the_chain_is_tried_in_random_order():
    from sharedcache.config.settings import FetchPolicy
    from sharedcache.loaders.transport import route

    fetch = FetchPolicy(proxy="a:1|b:1|c:1;DIRECT")
    seen = {tuple(route("http://h/x", fetch, {})) for _ in range(200)}
    assert len(seen) == 6 and all(r[-1] == "DIRECT" and sorted(r[:3]) == ["http://a:1", "http://b:1", "http://c:1"]
                                  for r in seen)


def test_the_back_off_of_a_late_retry_is_its_ceiling():
    # 2.0 ** attempt overflows a float past attempt 1023: a policy of thousands of retries (a
    # "retry for ever" site) met an OverflowError, an internal error, after hours of them.
    from sharedcache.config.settings import FetchPolicy

    policy = FetchPolicy(retries=100_000, backoff=0.25, backoff_max=60)
    assert [policy.delay(attempt) for attempt in (0, 1, 2)] == [0.25, 0.5, 1.0]
    assert policy.delay(8) == 60 and policy.delay(1024) == 60 and policy.delay(99_999) == 60


def test_a_host_name_with_several_addresses_reaches_the_one_that_answers(tmp_path, origin, owner):
    # The name is resolved in a thread of its own, within the connect timeout, and its addresses
    # are tried in the resolver's order, each within what is left of it: here ::1 first, where
    # nothing listens, then 127.0.0.1, the origin's.  The name is in the /etc/hosts of a mount
    # namespace.
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare: an /etc/hosts of a mount namespace")
    hosts = tmp_path / "hosts"
    hosts.write_text("::1 two-addresses.test\n127.0.0.1 two-addresses.test\n")
    url = origin.add("/data.tar.gz", DATA).replace("127.0.0.1", "two-addresses.test")
    base = tmp_path / "base"
    base.mkdir()
    result = subprocess.run(["unshare", "--mount", "sh", "-c", f'mount --bind {hosts} /etc/hosts && exec "$@"', "sh",
                             *SC, "--use", "-d", str(base), "--pid", str(owner.pid), "-v", f"http:{url}", "tar"],
                            capture_output=True, text=True, timeout=60, env=sc_env())
    assert result.returncode == 0, result.stderr
    check_tree(Path(result.stdout.strip()), FILES)
    assert origin.stats("/data.tar.gz").gets == 1
    assert "retrying" not in result.stderr  # ::1's refusal moved on to the next address at once


# In a network namespace of its own: the origin on 127.0.0.1, and fd00::2, reached through a veth
# pair whose other end is down, where what is sent to it is dropped without a word (the IPv6
# route of many a worker node).  Each name of the hosts file is resolved in a mount namespace.
BLACKHOLE = """
set -e
ip link set lo up
ip link add v0 type veth peer name v1
ip link set v0 up
ip -6 addr add fd00::1/64 dev v0 nodad
ip -6 neigh add fd00::2 lladdr 02:00:00:00:00:02 dev v0 nud permanent
mount --bind "$HOSTS" /etc/hosts
"$PYTHON" "$ORIGIN" --dir "$DIR" --port 0 > "$DIR/port" &
origin=$!
trap 'kill $origin' EXIT
for _ in $(seq 100); do [ -s "$DIR/port" ] && break; sleep 0.1; done
port=$(cat "$DIR/port")
set +e
"$@" "http:http://$NAME:$port/data.tar.gz" tar
"""


@pytest.mark.parametrize("name", ["dual.test", "only-v6.test"])
def test_an_address_whose_route_drops_what_is_sent_costs_a_quarter_of_a_second(tmp_path, name):
    # The addresses of a name were tried one after the other, each given what was left of the
    # connect timeout: the first, fd00::2, took all of it, at every retry, and the download failed
    # (curl, racing the next address beside it, took 0.2 s); the error showed urllib3's tuple,
    # "(<HTTPConnection(host=...) at 0x7f...>, 'Connection to ... timed out. (connect timeout=29.99...)')".
    if os.geteuid() != 0 or not (shutil.which("unshare") and shutil.which("ip")):
        pytest.skip("needs root, unshare and ip (iproute2): network and mount namespaces")
    served = tmp_path / "served"
    served.mkdir()
    (served / "data.tar.gz").write_bytes(DATA)
    hosts = tmp_path / "hosts"
    hosts.write_text("fd00::2 dual.test\n127.0.0.1 dual.test\nfd00::2 only-v6.test\n")
    config = tmp_path / "config"
    config.write_text("connect_timeout = 3\nretries = 1\n")
    base = tmp_path / "base"
    base.mkdir()
    env = sc_env(SC_CONFIG=str(config), HOSTS=str(hosts), PYTHON=sys.executable, DIR=str(served), NAME=name,
                 ORIGIN=str(Path(__file__).with_name("origin.py")))
    result = subprocess.run(["unshare", "--net", "--mount", "sh", "-c", BLACKHOLE, "sh", *SC, "--use", "-d", str(base),
                             "--pid", str(os.getpid()), "-v"], capture_output=True, text=True, timeout=120, env=env)
    if name == "dual.test":
        assert result.returncode == 0, result.stderr
        check_tree(Path(result.stdout.strip()), FILES)
        assert "retrying" not in result.stderr, result.stderr
    else:
        assert result.returncode == 1, result.stderr
        assert result.stderr.splitlines()[-1].endswith(
            f"cannot download http://{name}:{(served / 'port').read_text().strip()}/data.tar.gz: Connection to "
            f"{name} timed out. (connect timeout=3) (after 2 attempts)"), result.stderr


def test_the_addresses_of_a_name_are_tried_with_the_families_in_turn():
    from sharedcache.loaders.transport import _families_in_turn

    assert _families_in_turn(["::1", "::2", "10.0.0.1", "10.0.0.2", "::3"]) == [
        "::1", "10.0.0.1", "::2", "10.0.0.2", "::3"]
    assert _families_in_turn(["10.0.0.1", "::1", "::2"]) == ["10.0.0.1", "::1", "::2"]
    assert _families_in_turn(["10.0.0.1", "10.0.0.2"]) == ["10.0.0.1", "10.0.0.2"]


OUT_OF_SOCKETS = """
import resource, socket, sys
from sharedcache.errors import OutOfFilesError
from sharedcache.loaders.transport import _first_to_connect
listener = socket.create_server(("127.0.0.1", 0))
resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
try:
    while True:  # every descriptor taken
        __import__("os").open("/dev/null", 0)
except OSError:
    pass
try:
    _first_to_connect(["::1", "127.0.0.1"], listener.getsockname()[1], 5.0, None, None)
except OutOfFilesError as e:
    sys.exit(str(e))
"""


def test_a_process_with_no_descriptor_for_a_socket_says_so_and_not_that_the_host_failed():
    # A socket this process may not open (ulimit -n) was the connection's failure ("Failed to
    # establish a new connection: [Errno 24] Too many open files"), the download's, and recorded
    # as the repository's for its waiters.
    run = subprocess.run([sys.executable, "-c", OUT_OF_SOCKETS], capture_output=True, text=True, timeout=60)
    assert run.returncode == 1 and run.stderr.startswith("too many open files: this process may open "), run.stderr


def test_a_certificate_for_another_host_is_not_said_to_want_its_ca(tmp_path, tls_origin, owner):
    # Its CA given, a certificate for another host (or expired) was called untrusted, with the
    # advice to give its CA: no CA makes such a certificate do.
    server, ca = tls_origin
    server.add("/data.tar.gz", DATA)
    url = f"https://localhost:{server.port}/data.tar.gz"  # (the certificate names 127.0.0.1 alone)
    result = use(tmp_path, owner, url, env=sc_env(SSL_CERT_FILE=str(ca)))
    assert result.returncode == 1, result.stderr
    assert "the server's certificate is refused (Hostname mismatch" in result.stderr, result.stderr
    assert "give its CA" not in result.stderr, result.stderr
    # Without its CA, the advice stands.
    result = use(tmp_path, owner, f"https://127.0.0.1:{server.port}/data.tar.gz")
    assert result.returncode == 1 and "untrusted server certificate" in result.stderr, result.stderr
    assert "give its CA with SSL_CERT_FILE" in result.stderr, result.stderr


_CREDENTIALS_AT_HOME = r"""
import pathlib, sys
import sharedcache
from sharedcache.config.settings import Credentials, FetchPolicy

given = Credentials(ca_file="~/ca.pem", ca_dir="~/cas:/etc/ssl/certs", grid_ca_dir="~/grid",
                    cert_file=pathlib.Path("~/cert.pem"), key_file="~/key.pem",
                    bearer_token_file="~/token", netrc="~/netrc")
print(given)
found = Credentials.discover({}, ca_bundle="~/ca.pem", client_cert="~/cert.pem", bearer_token_file="~/token",
                             netrc="~/netrc")
print(found.ca_file, found.cert_file, found.bearer_token_file, found.netrc)
with sharedcache.use(*sys.argv[1:], name="r", directories="~", fetch=FetchPolicy(
        credentials=Credentials(netrc="~/netrc"))) as path:
    print(path)
try:
    Credentials(netrc="~no-such-user-of-sc/netrc")
except sharedcache.UsageError as e:
    print(e)
"""


def test_a_leading_tilde_in_the_credential_paths_given_from_python_is_the_home(tmp_path, origin):
    # A config file and SC_* variables make "~" the home, but Credentials(netrc="~/netrc") from
    # Python (no shell expands it) read $PWD/~/netrc: no login was sent, and the origin said 401.
    home, elsewhere = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    elsewhere.mkdir()
    for name in ("ca.pem", "cert.pem", "token"):
        (home / name).write_text("t0ken\n")
    (home / "netrc").write_text("machine 127.0.0.1 login alice password s3cret\n")
    url = origin.add("/data.tar.gz", DATA)
    done = subprocess.run([sys.executable, "-c", _CREDENTIALS_AT_HOME, *recipe(url)], cwd=elsewhere,
                          capture_output=True, text=True, timeout=60, env=sc_env(HOME=str(home)))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        f"Credentials(bearer_token_file='{home}/token', ca_dir='{home}/cas:/etc/ssl/certs', ca_file='{home}/ca.pem', "
        f"cert_file='{home}/cert.pem', found_with=(), grid_ca_dir='{home}/grid', key_file='{home}/key.pem', "
        f"netrc='{home}/netrc', token_from='{home}/token', variables=())",
        f"{home}/ca.pem {home}/cert.pem {home}/token {home}/netrc",
        str(user_dir(home) / "r"),
        "Credentials(netrc=...) names '~no-such-user-of-sc/netrc', but there is no user 'no-such-user-of-sc'"]
    assert origin.stats("/data.tar.gz").authorizations == ["Basic YWxpY2U6czNjcmV0"]
    assert os.listdir(elsewhere) == []
