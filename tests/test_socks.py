"""Downloads through a SOCKS proxy (``socks5h://``, as an ssh tunnel gives, and the other schemes
curl reads), given as curl's variables or in a proxy chain: the proxy makes the connection, and
resolves the host name with ``socks5h``; its user and password are sent to it alone and never
shown; a SOCKS proxy that is down is failed over like any other.  The proxy is a real SOCKS5
server on loopback (tests/socksproxy.py)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from origin import Origin
from scutil import Sleeper, check_tree, sample_files, sc, sc_env, tarball_bytes
from socksproxy import SocksProxy
from squid import free_port

FILES = sample_files()
DATA = tarball_bytes(FILES)
SHA256 = hashlib.sha256(DATA).hexdigest()
#: A host name that only the proxy knows: a download that reaches it went by the proxy's resolver.
ONLY_THE_PROXY_KNOWS = "data.socks.test"

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def owner() -> Iterator[Sleeper]:
    with Sleeper() as sleeper:
        yield sleeper


def use(base: Path, owner: Sleeper, url: str, *extra: str, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return sc("--use", "-n", "data", "-d", str(base), "--pid", str(owner.pid), *extra, f"http:{url}",
              f"sha256:{SHA256}", "tar", env=env if env is not None else sc_env())


@pytest.mark.parametrize("given", ["--proxy", "all_proxy", "http_proxy"])
def test_a_name_goes_to_a_socks5h_proxy_unresolved(tmp_path: Path, origin: Origin, owner: Sleeper,
                                                    given: str) -> None:
    origin.add("/data.tar.gz", DATA)
    url = f"http://{ONLY_THE_PROXY_KNOWS}:{origin.port}/data.tar.gz"
    with SocksProxy(names={ONLY_THE_PROXY_KNOWS: "127.0.0.1"}) as proxy:
        if given == "--proxy":
            result = use(tmp_path, owner, url, "--proxy", proxy.url())
        else:
            result = use(tmp_path, owner, url, env=sc_env(**{given: proxy.url()}))
        assert result.returncode == 0, result.stderr
        assert proxy.asked == [(ONLY_THE_PROXY_KNOWS, origin.port)]
    check_tree(Path(result.stdout.strip()), FILES)


def test_an_address_goes_through_a_socks5_proxy(tmp_path: Path, origin: Origin, owner: Sleeper) -> None:
    url = origin.add("/data.tar.gz", DATA)
    with SocksProxy() as proxy:
        result = use(tmp_path, owner, url, "--proxy", proxy.url("socks5"))
        assert result.returncode == 0, result.stderr
        assert proxy.asked == [("127.0.0.1", origin.port)]
    check_tree(Path(result.stdout.strip()), FILES)


def test_the_password_goes_to_the_socks_proxy_alone_and_is_never_shown(tmp_path: Path, origin: Origin,
                                                                        owner: Sleeper) -> None:
    url = origin.add("/data.tar.gz", DATA)
    for base in ("wrong", "right"):
        (tmp_path / base).mkdir()
    config = tmp_path / "sc.conf"
    config.write_text("retries = 0\n")  # (a refused login is retried as any failed connection)
    with SocksProxy(login=("alice", "s3cret-word")) as proxy:
        wrong = use(tmp_path / "wrong", owner, url, "--proxy", proxy.url(login="alice:other-word"),
                    env=sc_env(SC_CONFIG=str(config)))
        assert wrong.returncode == 1 and wrong.stderr.count("\n") == 1, wrong.stderr
        assert wrong.stderr.endswith(f"via proxy socks5h://127.0.0.1:{proxy.port}: the SOCKS exchange failed: "
                                     "SOCKS5 authentication failed\n"), wrong.stderr
        assert "word" not in wrong.stderr
        assert proxy.refused_logins >= 1 and not proxy.asked
        right = use(tmp_path / "right", owner, url, "--proxy", proxy.url(login="alice:s3cret-word"), "-v")
        assert right.returncode == 0, right.stderr
        assert "s3cret" not in right.stderr
    assert origin.stats("/data.tar.gz").gets == 1
    stored = "".join(p.read_bytes().decode("latin-1") for p in (tmp_path / "right").rglob("*")
                     if p.is_file() and not os.path.islink(p))
    assert "s3cret" not in stored


def test_a_socks_proxy_that_is_down_is_failed_over(tmp_path: Path, origin: Origin, owner: Sleeper) -> None:
    url = origin.add("/data.tar.gz", DATA)
    dead = free_port()
    with SocksProxy() as proxy:
        result = use(tmp_path, owner, url, "-v", "--proxy", f"socks5h://127.0.0.1:{dead};{proxy.url()}")
        assert result.returncode == 0, result.stderr
        assert proxy.asked == [("127.0.0.1", origin.port)]
    assert f"proxy socks5h://127.0.0.1:{dead} failed for {url} (Unable to connect to proxy: [Errno 111] Connection " \
           f"refused); failing over to proxy {proxy.url()}" in result.stderr, result.stderr


def test_a_socks_proxy_that_cannot_reach_the_origin_fails_in_one_line(tmp_path: Path, owner: Sleeper) -> None:
    url = f"http://127.0.0.1:{free_port()}/data.tar.gz"
    config = tmp_path / "sc.conf"
    config.write_text("retries = 0\n")
    base = tmp_path / "base"
    base.mkdir()
    with SocksProxy() as proxy:
        result = use(base, owner, url, "--proxy", proxy.url(), env=sc_env(SC_CONFIG=str(config)))
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr == (f"sc: error: repository 'data': cannot download {url} via proxy "
                             f"socks5h://127.0.0.1:{proxy.port}: the SOCKS exchange failed: 0x05: Connection "
                             "refused\n"), result.stderr
    assert "Traceback" not in result.stderr


def test_https_goes_through_a_socks_proxy_verified_end_to_end(tmp_path: Path, tls_origin, owner: Sleeper) -> None:  # type: ignore[no-untyped-def]
    # TLS goes through the proxy's connection, as through a CONNECT tunnel: the certificate is
    # the origin's, checked against the CA given.
    server, ca = tls_origin
    server.add("/data.tar.gz", DATA)
    url = f"https://127.0.0.1:{server.port}/data.tar.gz"
    with SocksProxy() as proxy:
        result = use(tmp_path, owner, url, env=sc_env(https_proxy=proxy.url(), SSL_CERT_FILE=str(ca)))
        assert result.returncode == 0, result.stderr
        assert proxy.asked == [("127.0.0.1", server.port)]
        (tmp_path / "untrusted").mkdir()
        untrusted = use(tmp_path / "untrusted", owner, url, env=sc_env(https_proxy=proxy.url()))
    assert untrusted.returncode == 1 and ": untrusted server certificate (unable to get local issuer certificate)" \
        in untrusted.stderr, untrusted.stderr
    check_tree(Path(result.stdout.strip()), FILES)


def test_a_socks_proxy_without_pysocks_is_refused_saying_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    # (PySocks is installed for the tests: its absence is what the settings are told here.)
    from sharedcache.config import settings
    from sharedcache.errors import SettingError

    monkeypatch.setattr(settings, "_socks_installed", lambda: False)
    with pytest.raises(SettingError) as caught:
        settings.proxy_url("socks5h://alice:s3cret@127.0.0.1:1080")
    assert str(caught.value).startswith("proxy cannot use 'socks5h://127.0.0.1:1080' (socks5h needs the PySocks "
                                        "package: pip install 'sharedcache[socks]'): expected DIRECT or "), caught.value
    assert settings.proxy_url("http://127.0.0.1:3128") == "http://127.0.0.1:3128"
