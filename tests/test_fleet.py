"""One origin download for a whole site: several hosts, each in its own network namespace with its
own base directory, run ``sc --use`` of the same recipe at once through one squid configured as
sites run it (docs/site-squid.md).  The origin serves one GET; every host has verified data.

The namespaces, the bridge that joins them and the private addresses (10.x) exist only for the
test: a "site" namespace holds the bridge, the origin and squid; each host is a namespace joined
to the bridge by a veth pair.  Deleting the namespaces at the end removes everything.

The origin holds its answer until squid has every host's request, as a busy origin keeps a
fleet waiting for the head of its answer: the requests are all in before squid can serve any of
them from a cache, and without ``collapsed_forwarding`` each of them reaches the origin.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from scutil import (SC, Sleeper, check_tree, finish, get_direct, sample_files, sc_env, stop_process, tarball_bytes,
                    user_dir, wait_for)
from squid import Squid

HOSTS = 6
# 8 MB as served (random bytes do not shrink in the .tar.gz): more than squid keeps by default
# (maximum_object_size 4 MB), as a fleet's data is.
FILES = sample_files(n=8, size=1_000_000, compressible=False)
DATA = tarball_bytes(FILES, compression="gz")
TESTS = Path(__file__).parent


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


class Site:
    """The namespaces of a site: ``site`` (bridge, origin, squid at ``.1``) and ``hosts``."""

    def __init__(self, hosts: int) -> None:
        tag = f"sc{os.getpid()}-{random.randrange(1 << 16):x}"
        self.prefix = f"10.{random.randrange(100, 250)}.{random.randrange(1, 250)}"
        self.site = f"{tag}-site"
        self.hosts = [f"{tag}-h{i}" for i in range(hosts)]
        self.made: list[str] = []

    @property
    def address(self) -> str:
        return f"{self.prefix}.1"

    def create(self) -> Site:
        _ip("netns", "add", self.site)
        self.made.append(self.site)
        _ip("-n", self.site, "link", "set", "lo", "up")
        _ip("-n", self.site, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.site, "addr", "add", f"{self.address}/24", "dev", "br0")
        _ip("-n", self.site, "link", "set", "br0", "up")
        for i, host in enumerate(self.hosts):
            _ip("netns", "add", host)
            self.made.append(host)
            _ip("-n", host, "link", "set", "lo", "up")
            _ip("-n", host, "link", "add", "eth0", "type", "veth", "peer", "name", f"v{i}", "netns", self.site)
            _ip("-n", self.site, "link", "set", f"v{i}", "master", "br0", "up")
            _ip("-n", host, "addr", "add", f"{self.prefix}.{10 + i}/24", "dev", "eth0")
            _ip("-n", host, "link", "set", "eth0", "up")
        return self

    def delete(self) -> None:
        for name in reversed(self.made):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)

    def run_in(self, netns: str, command: list[str], **kwargs):  # type: ignore[no-untyped-def]
        return subprocess.Popen(["ip", "netns", "exec", netns, *command], **kwargs)


@pytest.fixture
def site() -> Iterator[Site]:
    if os.geteuid() != 0:
        pytest.skip("the fleet test needs root, to create network namespaces")
    if shutil.which("ip") is None:
        pytest.skip("the fleet test needs ip (iproute2) to create network namespaces")
    made = Site(HOSTS)
    try:
        made.create()
    except subprocess.CalledProcessError as e:
        made.delete()
        pytest.skip(f"cannot create network namespaces here: {e.stderr.decode().strip()}")
    try:
        yield made
    finally:
        made.delete()


def test_a_fleet_behind_one_squid_makes_one_origin_download(site, tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    (served / "data.tar.gz").write_bytes(DATA)
    # Published a day ago: fresh for hours by squid's default refresh_pattern (`. 0 20% 4320`, a
    # fifth of its age), so that squid need not revalidate it for each host.
    day_ago = time.time() - 86400
    os.utime(served / "data.tar.gz", (day_ago, day_ago))
    origin = site.run_in(site.site, [sys.executable, str(TESTS / "origin.py"), "--dir", str(served),
                                     "--host", site.address, "--held"],
                         stdout=subprocess.PIPE, text=True)
    try:
        assert origin.stdout is not None
        port = int(origin.stdout.readline())  # printed once it listens
        url = f"http://{site.address}:{port}/data.tar.gz"
        recipe = [f"http:{url}", f"sha256:{hashlib.sha256(DATA).hexdigest()}", "tar"]
        with Squid(host=site.address, port=3128, netns=site.site) as proxy, Sleeper() as owner:
            env = sc_env(http_proxy=proxy.url)
            for host in site.hosts:
                (tmp_path / host).mkdir()  # each host's own base directory
            fleet = [site.run_in(host, [*SC, "--use", "-n", "data", "-d", str(tmp_path / host), "--pid",
                                        str(owner.pid), *recipe],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
                     for host in site.hosts]
            try:
                # Within the 60 s that a host waits for the head of an answer (read_timeout).
                wait_for(lambda: proxy.serving(url) >= HOSTS, timeout=45, what="every host's request at squid")
                origin.send_signal(signal.SIGUSR1)  # releases the answers held
                results = finish(fleet, timeout=90)
            finally:  # hosts still waiting when squid did not get all their requests
                for process in fleet:
                    stop_process(process)
            for host, (status, out, err) in zip(site.hosts, results, strict=True):
                assert status == 0, (host, err)
                assert out == f"{user_dir(tmp_path / host) / 'data'}\n"
                check_tree(user_dir(tmp_path / host) / "data", FILES)
            gets = [(method, status) for method, seen, status, _ in proxy.requests() if seen == url]
            assert len(gets) == HOSTS, proxy.requests()
        stats = get_direct(f"http://{site.address}:{port}/__origin__/stats", netns=site.site)
        assert json.loads(stats)["/data.tar.gz"]["gets"] == 1, (stats, gets)
    finally:
        stop_process(origin)
        if origin.stdout is not None:
            origin.stdout.close()
