"""A real squid forward proxy for tests, with a generated config, optionally inside a network
namespace; stopped by its PID.

    with Squid() as proxy:                       # on 127.0.0.1, a free port
        env["http_proxy"] = proxy.url
        ...
        proxy.requests()                         # access log: [(method, url, status, user agent)]
        proxy.serving(url)                       # how many clients it is answering for url now

Configured as a site runs one in front of a fleet: ``collapsed_forwarding on`` (simultaneous misses
for one URL make one request upstream), ``range_offset_limit -1`` and ``quick_abort_min -1 KB`` (a
range request fetches and caches the whole object, even when its client leaves) and a
``maximum_object_size`` far above the default 4 MB.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from scutil import get_direct, stop_process

SQUID = shutil.which("squid") or ("/usr/sbin/squid" if os.path.exists("/usr/sbin/squid") else None)

_NCSA_AUTH = "/usr/lib/squid/basic_ncsa_auth"
_CONFIG = """\
http_port {host}:{port}
pid_filename none
cache_log {dir}/cache.log
logformat sctest %rm %ru %Ss/%>Hs "%{{User-Agent}}>h"
access_log stdio:{dir}/access.log sctest
cache_mem 256 MB
maximum_object_size 1 GB
maximum_object_size_in_memory 256 MB
collapsed_forwarding on
range_offset_limit -1
quick_abort_min -1 KB
{access}
shutdown_lifetime 0 seconds
pinger_enable off
coredump_dir {dir}
"""


def require_squid() -> str:
    if SQUID is None:
        pytest.skip("squid is not installed (tools/test.sh installs it when run as root)")
    return SQUID


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Squid:
    """One squid process.  ``netns``: run it in that network namespace (``ip netns exec``)."""

    def __init__(self, *, host: str = "127.0.0.1", port: int | None = None, netns: str | None = None,
                 users: dict[str, str] | None = None, config: str = "") -> None:
        """``users``: name -> password of the users allowed, with basic authentication (without
        it, anyone may use the proxy); ``config``: lines added to its squid.conf."""
        self.binary = require_squid()
        self.host, self.port, self.netns = host, port or free_port(), netns
        # squid drops root for its own user, which must reach its files: not under pytest's 0700 tmp.
        self.dir = Path(tempfile.mkdtemp(prefix="sc-squid-"))
        access = "http_access allow all"
        if users:
            hashed = [subprocess.run(["openssl", "passwd", "-apr1", password], capture_output=True, text=True,
                                     check=True, timeout=30).stdout.strip() for password in users.values()]
            (self.dir / "passwd").write_text("".join(f"{u}:{h}\n" for u, h in zip(users, hashed, strict=True)))
            access = (f"auth_param basic program {_NCSA_AUTH} {self.dir}/passwd\n"
                      "acl users proxy_auth REQUIRED\nhttp_access allow users\nhttp_access deny all")
        (self.dir / "squid.conf").write_text(_CONFIG.format(host=self.host, port=self.port, dir=self.dir,
                                                            access=access) + config)
        if os.geteuid() == 0:
            user = pwd.getpwnam("proxy")
            os.chown(self.dir, user.pw_uid, user.pw_gid)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 20.0) -> Squid:
        command = [self.binary, "-N", "-f", str(self.dir / "squid.conf")]
        if self.netns is not None:
            command = ["ip", "netns", "exec", self.netns, *command]
        self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while not self._listening():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                log = (self.dir / "cache.log").read_text() if (self.dir / "cache.log").exists() else ""
                self.stop()
                raise RuntimeError(f"squid did not start listening on {self.url}: {log[-2000:]}")
            time.sleep(0.1)
        return self

    def _listening(self) -> bool:
        log = self.dir / "cache.log"
        return log.exists() and "Accepting HTTP Socket connections" in log.read_text()

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is not None:
            stop_process(self.proc, timeout)

    def requests(self) -> list[tuple[str, str, str, str]]:
        """What the access log shows: (method, URL, squid result/status, User-Agent) per request."""
        log = self.dir / "access.log"
        if not log.exists():
            return []
        rows = []
        for line in log.read_text().splitlines():
            method, url, status, agent = line.split(" ", 3)
            rows.append((method, url, status, agent.strip('"')))
        return rows

    def serving(self, url: str) -> int:
        """How many clients' requests for ``url`` squid is answering now (hits and misses, before
        their access log lines), as its cache manager lists them; for a squid without ``users``."""
        page = get_direct(f"{self.url}/squid-internal-mgr/active_requests", netns=self.netns)
        return page.splitlines().count(f"uri {url}")

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Squid:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
