"""A real nginx for tests, from the servers of its ``http`` block; stopped by its PID.

    server = Nginx(home, "server { listen 127.0.0.1:PORT; root ...; }", [PORT])
    ...
    server.stop()

It runs in the foreground with one process, and keeps its logs, pid file and temporary files in
``home``.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

NGINX = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")


def require_nginx() -> str:
    if NGINX is None:
        pytest.skip("nginx is not installed (tools/test.sh installs it when run as root with apt-get)")
    return NGINX


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Nginx:
    """nginx with ``servers`` (and whatever else an ``http`` block may hold), started and
    listening on every one of ``ports`` of 127.0.0.1."""

    def __init__(self, home: Path, servers: str, ports: Sequence[int], timeout: float = 15.0) -> None:
        self.home, self.ports = home, ports
        config = home / "nginx.conf"
        config.write_text(f"""
daemon off;
master_process off;
pid {home}/nginx.pid;
error_log {home}/error.log;
events {{ worker_connections 64; }}
http {{
    access_log {home}/access.log;
    client_body_temp_path {home}/body; proxy_temp_path {home}/proxy; fastcgi_temp_path {home}/fastcgi;
    uwsgi_temp_path {home}/uwsgi; scgi_temp_path {home}/scgi;
{servers}
}}
""")
        self.process = subprocess.Popen([require_nginx(), "-c", str(config), "-p", str(home)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while not self._listening():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                error = (home / "error.log").read_text() if (home / "error.log").exists() else ""
                raise RuntimeError(f"nginx did not start: {error}")
            time.sleep(0.05)

    def _listening(self) -> bool:
        try:
            for port in self.ports:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            return False
        return True

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT)  # a graceful stop, by the PID we started
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        if self.process.stderr is not None:
            self.process.stderr.close()
